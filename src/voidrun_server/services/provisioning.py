"""Provisioning: turning a create request into a running sandbox (cold, or from the warm pool).

Kept apart from ``services/sandboxes.py`` (reads, verbs, the data plane): a create validates and
resolves the image, checks the org's quotas and the host's free-space floor, records the row
(quota check and insert in one transaction that locks the org row first), then either hands out
a warm-pool sandbox or boots a new one — in the request (``sync``, the default) or in the
background. A create that fails leaves nothing behind: cleanup is shielded from cancellation
and the row ends ``deleted`` (or ``error`` for a background boot) with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .. import ids
from ..drivers.base import DriverError, NetworkPolicy, SandboxSpec
from ..errors import DeadlineExceededError, VoidRunError
from ..schemas.sandboxes import SandboxCreate
from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.tables import Image, Sandbox
from . import images, networking, validation
from .accounts import Principal
from .agents import AgentSocket
from .lifecycle import Status
from .pool import Warm, WarmPool
from .quotas import Usage

if TYPE_CHECKING:
    from .sandboxes import SandboxService

log = logging.getLogger(__name__)


def hostname_of(name: str) -> str:
    """Sandbox names may be 253-character subdomains; a hostname label holds 63."""
    return name[:63].rstrip("-.") or "sandbox"


def describe(exc: VoidRunError) -> str:
    return f"{exc.message}: {exc.details}" if exc.details else exc.message


class _Boot:
    """A create's boot (or warm hand-out), running beside the transaction that records it."""

    def __init__(self, sandbox_id: str, job: Callable[[], Awaitable[None]]) -> None:
        self.sandbox_id = sandbox_id
        self.job = job
        self.finished = False
        self.failure: VoidRunError | None = None
        self.done = anyio.Event()


class Provisioner:
    def __init__(self, service: SandboxService) -> None:
        self.service = service

    async def create(self, caller: Principal, body: SandboxCreate) -> Sandbox:
        request = validation.validate_create(
            body, self.service.settings.default_image, caller.org_id
        )
        isolation = self.service.driver.choose(body.isolation)  # 400 when not run here
        policy = networking.requested_policy(
            self.service.settings, self.service.driver, isolation, body.network, None
        )
        disk_mb = self.service.settings.sandbox_disk_mb
        wanted = Usage(sandboxes=1, cpu=request.cpu, mem_mb=request.mem, disk_mb=disk_mb)
        pool = self.service.pools.get(isolation)
        with pool.serving() if pool is not None else nullcontext():
            row = await self._create(
                caller, request, isolation, disk_mb, wanted, policy, bool(body.start_cmd)
            )
        return row

    async def _create(
        self,
        caller: Principal,
        request: validation.CreateRequest,
        isolation: str,
        disk_mb: int,
        wanted: Usage,
        policy: NetworkPolicy | None,
        body_start_cmd: bool = False,
    ) -> Sandbox:
        pool, warm = self.service.pools.get(isolation), None
        booting: _Boot | None = None
        failure: BaseException | None = None  # raised after the group: it would wrap it
        async with anyio.create_task_group() as boots:
            try:  # one transaction: image, quota (org row locked first) and the new row
                async with transaction(self.service.sessions) as session:
                    image = await images.resolve(session, caller.org_id, request.image)
                    await self.service.check_quota(session, caller.org_id, wanted)
                    # taken only once the quota allows it, and given back if the insert fails
                    warm = pool.take(Path(image.rootfs), disk_mb) if pool is not None else None
                    if warm is None:  # a warm sandbox's disk exists: only a new one needs room
                        await self.service.disk_floor.reserve_for_create(disk_mb)
                    row = self._row(caller, request, image, disk_mb, warm)
                    row.isolation = isolation
                    row.workdir = (image.config or {}).get("workingDir") or None
                    env = {**images.image_env(image), **row.env_vars}
                    start_cmd = images.start_command(image) if body_start_cmd else None
                    row.network = policy.to_wire() if policy is not None else None
                    spec = self._spec(row, image, env, policy)
                    if warm is not None or request.sync:
                        # The quota allows it: the sandbox boots (or a warm one is made the
                        # caller's) while its row is written.
                        job = (
                            partial(self._hand_out, pool, warm, spec)
                            if pool is not None and warm is not None
                            else partial(self._boot, spec)
                        )
                        booting = _Boot(spec.sandbox_id, job)
                        boots.start_soon(self._run_locked, booting)
                    session.add(row)
                    repo.record(session, "sandbox.create", caller.org_id, row.id, image=row.image)
            except BaseException as exc:
                failure = exc
                if booting is None and warm is not None and pool is not None:
                    pool.give_back(warm)  # untouched: another create may have it
                elif booting is not None:
                    boots.cancel_scope.cancel()  # the driver undoes a create it was cancelled in
                    with anyio.CancelScope(shield=True):
                        await booting.done.wait()
                        if booting.finished or warm is not None:  # it exists: undo it
                            await self._destroy_quietly(booting.sandbox_id)
        if failure is not None:
            raise failure
        if booting is None:
            self.service.spawn(lambda: self._boot_in_background(spec))
            return row
        if booting.failure is not None:
            await self._discard_failed_create(row.id, booting.failure)
            raise VoidRunError(
                "Failed to create sandbox", describe(booting.failure)
            ) from booting.failure
        if start_cmd:
            await self._start_cmd(caller, row, start_cmd)
        return row

    async def _hand_out(self, pool: WarmPool, warm: Warm, spec: SandboxSpec) -> None:
        """Make a warm-pool sandbox the caller's (``pool.hand_out``)."""
        await pool.hand_out(
            warm,
            spec.sandbox_id,
            hostname=spec.hostname,
            cpu=spec.cpu,
            mem_mb=spec.mem_mb,
            env=dict(spec.env),
            network=spec.network,
        )
        self.service._sockets[spec.sandbox_id] = warm.agent_socket

    @staticmethod
    def _spec(
        row: Sandbox, image: Image, env: dict[str, str], policy: NetworkPolicy | None
    ) -> SandboxSpec:
        return SandboxSpec(
            sandbox_id=row.id,
            hostname=hostname_of(row.name),
            rootfs=Path(image.rootfs),
            layers=tuple(Path(layer) for layer in image.layers or ()),
            cpu=row.cpu,
            mem_mb=row.mem,
            disk_mb=row.disk_mb,
            env=env,
            network=policy,
            isolation=row.isolation,
        )

    async def _run_locked(self, boot: _Boot) -> None:
        """A synchronous create's boot or hand-out, started inside the transaction that records
        it. The outcome is left on ``boot``: a failure is the caller's to report, a
        cancellation the driver's to undo."""
        try:
            async with self.service.lock(boot.sandbox_id):
                await boot.job()
                boot.finished = True
        except VoidRunError as exc:
            boot.failure = exc
        finally:
            boot.done.set()

    async def _start_cmd(self, caller: Principal, row: Sandbox, command: str) -> None:
        """The image's ``Entrypoint``+``Cmd`` as a background command (``startCmd``); a
        failure to start it is logged, the sandbox stays (its processes list shows no command)."""
        from ..schemas.processes import CommandRunRequest
        from .commands import CommandService

        try:
            await CommandService(self.service).run(
                caller, row.id, CommandRunRequest(command=command, cwd=row.workdir)
            )
        except VoidRunError as exc:
            log.warning("sandbox %s: image command %r did not start: %s", row.id, command, exc)

    @staticmethod
    def _row(
        caller: Principal,
        request: validation.CreateRequest,
        image: Image,
        disk_mb: int,
        warm: Warm | None,
    ) -> Sandbox:
        return Sandbox(
            id=warm.sandbox_id if warm else ids.new_id(),
            org_id=caller.org_id,
            created_by=caller.user_id,
            name=request.name,
            image=f"{image.name}:{image.tag}",
            image_id=image.id,
            cpu=request.cpu,
            mem=request.mem,
            disk_mb=disk_mb,
            status=Status.RUNNING,
            env_vars=request.env_vars,
            labels=request.labels,
            ports=[p.model_dump() for p in request.ports],
            auto_sleep=request.auto_sleep,
            region=request.region,
            ref_id=request.ref_id,
        )

    async def _boot(self, spec: SandboxSpec) -> None:
        seconds = self.service.settings.sandbox_ready_timeout_seconds + 5
        try:
            with anyio.fail_after(seconds):
                info = await self.service.driver.create(spec)
                await self.service.agents.ping(spec.sandbox_id, AgentSocket.of(info))
        except TimeoutError:
            raise DeadlineExceededError("Sandbox did not start in time", f"{seconds:g}s") from None
        self.service._sockets[spec.sandbox_id] = AgentSocket.of(info)

    async def _boot_in_background(self, spec: SandboxSpec) -> None:
        async with self.service.lock(spec.sandbox_id):
            try:
                await self._boot(spec)
            except VoidRunError as exc:
                log.warning("background create of %s failed: %s", spec.sandbox_id, exc)
                with anyio.CancelScope(shield=True):
                    await self._destroy_quietly(spec.sandbox_id)
                    await self.service.set_status(
                        spec.sandbox_id, Status.ERROR, error=describe(exc)
                    )

    async def _discard_failed_create(self, sandbox_id: str, exc: VoidRunError) -> None:
        with anyio.CancelScope(shield=True):
            await self._destroy_quietly(sandbox_id)
            await self.service.set_status(sandbox_id, Status.DELETED, error=describe(exc))

    async def _destroy_quietly(self, sandbox_id: str) -> None:
        self.service.agents.forget(sandbox_id)
        try:
            await self.service.driver.destroy(sandbox_id)
        except DriverError as exc:
            log.error("could not clean up sandbox %s: %s", sandbox_id, exc)
