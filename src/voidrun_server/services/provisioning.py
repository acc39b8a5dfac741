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
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.abc

from .. import ids
from ..drivers.base import DriverError, NetworkPolicy, SandboxSpec
from ..drivers.remote.driver import NodeUnreachableError
from ..errors import (
    DeadlineExceededError,
    QuotaExceededError,
    ServiceUnavailableError,
    VoidRunError,
)
from ..images import locations
from ..schemas.sandboxes import SandboxCreate
from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.tables import Image, Sandbox
from . import fleet as placement
from . import images, networking, validation
from .accounts import Principal
from .agents import AgentSocket
from .lifecycle import Status
from .pool import Warm, WarmPool
from .quotas import Usage
from .speculation import Guesses

if TYPE_CHECKING:
    from .sandboxes import SandboxService

log = logging.getLogger(__name__)


def hostname_of(name: str) -> str:
    """Sandbox names may be 253-character subdomains; a hostname label holds 63."""
    return name[:63].rstrip("-.") or "sandbox"


def describe(exc: VoidRunError) -> str:
    return f"{exc.message}: {exc.details}" if exc.details else exc.message


@dataclass(frozen=True)
class _Ask:
    """A create request, checked, with what the server decided for it."""

    request: validation.CreateRequest
    isolation: str
    disk_mb: int
    policy: NetworkPolicy | None


MAX_NODE_TRIES = 3


class _NodeRefused(Exception):
    """A fleet create whose node could not be reached (nothing was made there)."""

    def __init__(self, node: str, error: VoidRunError) -> None:
        self.node, self.error = node, error


class _Boot:
    """A create's boot (or warm hand-out), running beside the transaction that records it."""

    def __init__(self, sandbox_id: str, job: Callable[[], Awaitable[None]]) -> None:
        self.sandbox_id = sandbox_id
        self.job = job
        self.scope = anyio.CancelScope()
        self.finished = False
        self.failure: VoidRunError | None = None
        self.done = anyio.Event()


@dataclass
class _Plan:
    """What a create boots: its image, its spec, the warm sandbox it takes (if any) and the
    boot or hand-out under way (None: it boots in the background once recorded)."""

    image: Image
    spec: SandboxSpec
    warm: Warm | None
    boot: _Boot | None = None
    node: str | None = None  # the node it boots on (fleet)
    node_warm: bool = False  # a warm sandbox taken from its node's pool (fleet)


class Provisioner:
    def __init__(self, service: SandboxService) -> None:
        self.service = service
        self.guesses = Guesses()
        fleet = service.fleet is not None
        self.nodes = placement.NodeGuesser(service.settings, service.sessions) if fleet else None

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
        ask = _Ask(request, isolation, disk_mb, policy)
        skip: list[str] = []
        copies = 0
        while True:
            try:
                with pool.serving() if pool is not None else nullcontext():
                    return await self._create(caller, ask, wanted, bool(body.start_cmd), skip)
            except _NodeRefused as refused:  # a fleet node unreachable: the next one
                log.warning("node %s refused a create: %s", refused.node, refused.error)
                skip.append(refused.node)
                if len(skip) >= MAX_NODE_TRIES:
                    raise refused.error from None
            except placement.ImageElsewhere as elsewhere:  # copied to a node with room first
                copies += 1
                if not await self._copy_image(elsewhere, last=copies >= MAX_NODE_TRIES):
                    skip.append(elsewhere.node)

    async def _copy_image(self, elsewhere: placement.ImageElsewhere, *, last: bool) -> bool:
        """Copy the image a create needs to the node placement found room on; a failed copy
        ends the create (503) when it was the last try, else the next try places elsewhere."""
        fleet = self.service.fleet
        assert fleet is not None
        within = self.service.settings.node_image_copy_timeout_seconds
        log.info("copying image %s to node %s from %s for a create", elsewhere.image_id,
                 elsewhere.node, elsewhere.source)  # fmt: skip
        try:
            await fleet.copy_image(elsewhere.node, elsewhere.image_id, elsewhere.source, within)
        except VoidRunError as exc:
            log.warning("image copy %s failed: %s", elsewhere, exc)
            if last:
                raise ServiceUnavailableError(
                    f"Could not copy the image to node {elsewhere.node}", describe(exc)
                ) from exc
            return False
        return True

    async def _create(
        self,
        caller: Principal,
        ask: _Ask,
        wanted: Usage,
        body_start_cmd: bool = False,
        skip: Sequence[str] = (),
    ) -> Sandbox:
        org, reference = caller.org_id, ask.request.image
        plan: _Plan | None = None
        failure: BaseException | None = None  # raised after the group: it would wrap it
        async with anyio.create_task_group() as boots:
            try:
                # Boot what the image name meant last time while the transaction checks it
                # (services/speculation.py): the transaction's ~8 ms leave the critical path.
                # On a fleet it boots on the node the placement will most likely pick.
                fleet = self.service.fleet
                guess = self.guesses.image(org, reference)
                if guess is not None and self._boots_now(ask, guess):
                    plan = await self._speculate(boots, ask, guess, skip)
                # one transaction: image, quota (org row locked first) and the new row
                async with transaction(self.service.sessions) as session:
                    image = await images.resolve(session, org, reference)
                    try:
                        await self.service.check_quota(session, org, wanted)
                    except QuotaExceededError:
                        self.guesses.refused(org)
                        raise
                    if plan is not None and plan.image.id != image.id:  # the guess was wrong
                        await self._undo(plan, ask)
                        plan = None
                    node = None
                    if fleet is not None:  # the node's row stays locked until the commit
                        node = await placement.place(
                            session,
                            self.service.settings,
                            cpu=ask.request.cpu,
                            mem_mb=ask.request.mem,
                            region=ask.request.region,
                            image=image,
                            skip=skip,
                            prefer=plan.node if plan is not None else None,
                        )
                        if plan is not None and plan.node != node:  # its node is full now
                            await self._undo(plan, ask)
                            plan = None
                    if plan is None:  # the quota allows it: boot (or hand out) while recording
                        plan = await self._plan(boots, ask, image, node)
                    row = self._row(caller, ask, image, plan.spec)
                    row.node_id = node
                    start_cmd = images.start_command(image) if body_start_cmd else None
                    session.add(row)
                    repo.record(session, "sandbox.create", org, row.id, image=row.image)
            except BaseException as exc:
                failure = exc
                if plan is not None:
                    await self._undo(plan, ask)
        if failure is not None:
            raise failure
        assert plan is not None
        # remembered once committed: a rolled-back transaction expires the rows it loaded
        self.guesses.resolved(org, reference, plan.image)
        booting = plan.boot
        if booting is None:
            spec = plan.spec
            self.service.spawn(lambda: self._boot_in_background(spec))
            return row
        if booting.failure is not None:
            await self._discard_failed_create(row.id, booting.failure)
            if row.node_id is not None and isinstance(booting.failure, NodeUnreachableError):
                raise _NodeRefused(row.node_id, booting.failure)
            raise VoidRunError(
                "Failed to create sandbox", describe(booting.failure)
            ) from booting.failure
        if start_cmd:
            await self._start_cmd(caller, row, start_cmd)
        return row

    def _boots_now(self, ask: _Ask, image: Image) -> bool:
        """Whether a create of ``image`` starts its sandbox before it is recorded: a
        synchronous one, or one a warm sandbox is ready for."""
        pool = self.service.pools.get(ask.isolation)
        ready = pool is not None and pool.has(self._files(image)[0], ask.disk_mb)
        return ask.request.sync or ready

    async def _speculate(
        self, boots: anyio.abc.TaskGroup, ask: _Ask, image: Image, skip: Sequence[str]
    ) -> _Plan | None:
        """The plan of a create that boots before its transaction answers (None: none does;
        on a fleet, when no node looks like it has room)."""
        if self.nodes is None:
            return await self._plan(boots, ask, image)
        request = ask.request
        node = await self.nodes.guess(
            cpu=request.cpu, mem_mb=request.mem, region=request.region, image=image, skip=skip
        )
        return await self._plan(boots, ask, image, node) if node is not None else None

    async def _plan(
        self, boots: anyio.abc.TaskGroup, ask: _Ask, image: Image, node: str | None = None
    ) -> _Plan:
        """Take a warm sandbox (or reserve room for a new disk) and start the boot or the
        hand-out in ``boots`` when this create boots now."""
        pool = self.service.pools.get(ask.isolation)
        warm = pool.take(self._files(image)[0], ask.disk_mb) if pool is not None else None
        node_warm = await self._take_node_warm(node, ask, image)
        if warm is None and node_warm is None:  # a warm sandbox's disk exists already
            await self.service.disk_floor.reserve_for_create(ask.disk_mb)
        sandbox_id = warm.sandbox_id if warm is not None else node_warm or ids.new_id()
        if node is not None and self.service.fleet is not None:
            self.service.fleet.place(sandbox_id, node)
        spec = self._spec(sandbox_id, ask, image)
        plan = _Plan(image, spec, warm, node=node, node_warm=bool(node_warm))
        if warm is not None or plan.node_warm or ask.request.sync:
            job = (
                partial(self._hand_out, pool, warm, plan.spec)
                if pool is not None and warm is not None
                else partial(self._node_hand_out, plan.spec)
                if plan.node_warm
                else partial(self._boot, plan.spec)
            )
            plan.boot = _Boot(sandbox_id, job)
            boots.start_soon(self._run_locked, plan.boot)
        return plan

    async def _undo(self, plan: _Plan, ask: _Ask) -> None:
        """Throw a plan away: a warm sandbox not yet touched goes back to its pool; a boot or
        hand-out under way is cancelled (the driver undoes a create it was cancelled in) and
        whatever it made is destroyed. A node's create is not cancelled (the node would go on
        with it): it is waited for, then destroyed."""
        with anyio.CancelScope(shield=True):
            boot, pool = plan.boot, self.service.pools.get(ask.isolation)
            if boot is None:
                if plan.warm is not None and pool is not None:
                    pool.give_back(plan.warm)  # untouched: another create may have it
                if plan.node_warm:  # taken on its node: the node's pool refills
                    await self._destroy_quietly(plan.spec.sandbox_id)
                return
            if plan.node is None:
                boot.scope.cancel()
            await boot.done.wait()
            made = boot.finished or plan.warm is not None or plan.node is not None
            if made or plan.node_warm:  # it exists (or may, on its node): undo it
                await self._destroy_quietly(boot.sandbox_id)

    async def _hand_out(self, pool: WarmPool, warm: Warm, spec: SandboxSpec) -> None:
        """Make a warm-pool sandbox the caller's (``pool.hand_out``). It was started under
        the server's default egress policy: only another one is applied."""
        await pool.hand_out_for(warm, spec, networking.default_policy(self.service.settings))
        self.service._sockets[spec.sandbox_id] = warm.agent_socket

    async def _take_node_warm(self, node: str | None, ask: _Ask, image: Image) -> str | None:
        """On a fleet: a warm sandbox of the placed node's pool (``node/pools.py``), if any."""
        fleet = self.service.fleet
        if node is None or fleet is None or image.layers:
            return None
        try:
            rootfs = self._files(image)[0]
            return await fleet.take_warm(node, ask.isolation, rootfs, ask.disk_mb)
        except DriverError as exc:  # a cold create follows (and meets the same node's answer)
            log.warning("node %s: no warm sandbox taken: %s", node, exc)
            return None

    async def _node_hand_out(self, spec: SandboxSpec) -> None:
        assert self.service.fleet is not None
        info = await self.service.fleet.hand_out(spec)
        self.service._sockets[spec.sandbox_id] = AgentSocket.of(info)

    def _files(self, image: Image) -> tuple[Path, tuple[Path, ...]]:
        """The image's root filesystem and layers as the driver that boots it finds them:
        under this server's images directory, or on a fleet as the row says (each node finds
        them under its own, ``node/internal.py``)."""
        if self.service.fleet is not None:
            return Path(image.rootfs), tuple(Path(layer) for layer in image.layers or ())
        root = self.service.settings.images_root
        return locations.located(root, image.rootfs), locations.located_all(root, image.layers)

    def _spec(self, sandbox_id: str, ask: _Ask, image: Image) -> SandboxSpec:
        request = ask.request
        rootfs, layers = self._files(image)
        return SandboxSpec(
            sandbox_id=sandbox_id,
            hostname=hostname_of(request.name),
            rootfs=rootfs,
            layers=layers,
            cpu=request.cpu,
            mem_mb=request.mem,
            disk_mb=ask.disk_mb,
            env={**images.image_env(image), **request.env_vars},
            network=ask.policy,
            isolation=ask.isolation,
        )

    async def _run_locked(self, boot: _Boot) -> None:
        """A synchronous create's boot or hand-out, started inside the transaction that records
        it. The outcome is left on ``boot``: a failure is the caller's to report, a
        cancellation the driver's to undo."""
        try:
            with boot.scope:
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
    def _row(caller: Principal, ask: _Ask, image: Image, spec: SandboxSpec) -> Sandbox:
        request = ask.request
        return Sandbox(
            id=spec.sandbox_id,
            org_id=caller.org_id,
            created_by=caller.user_id,
            name=request.name,
            image=f"{image.name}:{image.tag}",
            image_id=image.id,
            cpu=request.cpu,
            mem=request.mem,
            disk_mb=ask.disk_mb,
            status=Status.RUNNING,
            env_vars=request.env_vars,
            labels=request.labels,
            ports=[p.model_dump() for p in request.ports],
            auto_sleep=request.auto_sleep,
            region=request.region,
            ref_id=request.ref_id,
            isolation=ask.isolation,
            workdir=(image.config or {}).get("workingDir") or None,
            network=ask.policy.to_wire() if ask.policy is not None else None,
        )

    async def _boot(self, spec: SandboxSpec) -> None:
        seconds = self.service.settings.sandbox_ready_timeout_seconds + 5
        try:
            with anyio.fail_after(seconds):
                info = await self.service.driver.create(spec)
                socket = AgentSocket.of(info)
                if info.tunnel is None:
                    await self.service.agents.connect(spec.sandbox_id, socket)
        except TimeoutError:
            raise DeadlineExceededError("Sandbox did not start in time", f"{seconds:g}s") from None
        self.service._sockets[spec.sandbox_id] = socket
        if info.tunnel is not None:  # its node saw the agent answer; the tunnel opens meanwhile
            self.service.spawn(partial(self._open_tunnel, spec.sandbox_id, socket))

    async def _open_tunnel(self, sandbox_id: str, socket: AgentSocket) -> None:
        """The replica's connection to a new sandbox's agent, through its node's tunnel, made
        after the create answered: the first exec finds it open (or opens it itself)."""
        try:
            await self.service.agents.connect(sandbox_id, socket)
        except VoidRunError as exc:
            log.info("sandbox %s: tunnel not opened after its create: %s", sandbox_id, exc)

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
