"""The ``gvisor`` driver's async half: public API, deadlines, locking, readiness, cleanup.

Same rules as the namespace driver (``namespace/driver.py``): blocking work in worker threads
with absolute deadlines, every public operation under ``anyio.fail_after``, a failed create
leaves nothing (shielded cleanup), one lock per sandbox, host errors as :class:`DriverError`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import anyio.to_thread

from voidrun_server.drivers.base import (
    DriverError,
    DriverUnavailableError,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
)
from voidrun_server.drivers.common import (
    SandboxLocks,
    check_hostname,
    operation,
    validate_spec,
    wait_for_agent,
)
from voidrun_server.drivers.gvisor.host import OWNER, GvisorHost
from voidrun_server.drivers.gvisor.layout import GvisorRun
from voidrun_server.drivers.gvisor.runsc import (
    INSTALL_HINT,
    Runsc,
    find_runsc,
    pick_platform,
)
from voidrun_server.drivers.namespace import idmount
from voidrun_server.drivers.namespace.cgroups import detect_cgroups
from voidrun_server.drivers.namespace.networking import Networking
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.ready import wait_until_ready
from voidrun_server.drivers.namespace.state import SandboxRecord, read_record
from voidrun_server.drivers.namespace.wired import WiredSandboxes

__all__ = ["GvisorDriver", "check_host"]

PLATFORMS = ("systrap", "kvm", "ptrace")


def check_host(runsc_path: str | None = None) -> None:
    """Raise DriverUnavailableError unless this host can run the driver at all."""
    if os.geteuid() != 0:
        raise DriverUnavailableError(
            "the gvisor driver needs root (runsc, cgroups, loop and overlay mounts)",
            hint="run the server as root; the sandbox's kernel is gVisor's, not the host's",
        )
    find_runsc(runsc_path)
    idmount.check_support()
    detect_cgroups("voidrun")


class GvisorDriver(WiredSandboxes):
    """Sandboxes whose kernel is gVisor's sentry (``runsc``); see the package docstring."""

    name = "gvisor"
    _host: GvisorHost

    def __init__(
        self,
        state_dir: Path,
        *,
        agent_argv: Callable[[str], list[str]],
        agent_dir: Path,
        runtime_dir: Path | None = None,
        runsc_path: str | None = None,
        platform: str | None = None,
        probe_timeout: float = 10.0,
        probe_cache: Path | None = None,
        ready_timeout: float = 10.0,
        op_timeout: float = 30.0,
        cgroup_parent: str = "voidrun-gvisor",
        pids_max: int = 1024,
        networking: Callable[[], Networking | None] | None = None,
    ) -> None:
        """Check the host and pick the platform; DriverUnavailableError (with a hint) if the
        driver cannot run here. ``platform`` None: the fastest that works (probed once per
        runsc build and kernel in ``probe_cache`` (default ``state_dir``; the server passes a
        host-wide directory, so servers on one host probe once), each probe bounded by
        ``probe_timeout``). ``networking``: the
        server's sandbox network (``drivers/netshare.py``), shared with the namespace driver;
        None: loopback only (``runsc --network=none``)."""
        check_host(runsc_path)
        if platform is not None and platform not in PLATFORMS:
            raise DriverUnavailableError(
                f"unknown gVisor platform {platform!r}", hint=f"one of {', '.join(PLATFORMS)}"
            )
        state_dir = state_dir.resolve()
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        binary = find_runsc(runsc_path)
        cgroups = detect_cgroups(cgroup_parent)
        cgroups.ensure_parent()
        if platform is None:
            platform, self.platform_reason = pick_platform(
                binary, cgroups, probe_cache or state_dir, probe_timeout=probe_timeout
            )
        else:
            self.platform_reason = "configured"
        self.platform = platform
        runsc = Runsc(binary, platform)
        try:
            self.runsc_version = runsc.version()
        except DriverError as exc:
            raise DriverUnavailableError(f"runsc does not run: {exc}", hint=INSTALL_HINT) from exc
        net = networking() if networking is not None else None  # after every check above
        self._host = GvisorHost(
            state_dir,
            runsc=runsc,
            cgroups=cgroups,
            agent_argv=agent_argv,
            agent_dir=agent_dir.resolve(),
            runtime_dir=runtime_dir.resolve() if runtime_dir is not None else None,
            pids_max=pids_max,
            network=net.host if net is not None else None,
        )
        self.net = net
        self.network_enabled = net is not None
        self._ready_timeout = ready_timeout
        self._op_timeout = op_timeout
        self._lock = SandboxLocks()

    @property
    def state_dir(self) -> Path:
        return self._host.state_dir

    def describe(self) -> dict[str, object]:
        """For ``GET /api/health``: the runtime and the platform it runs on, and why."""
        return {
            "runtime": self.runsc_version,
            "platform": self.platform,
            "notes": self.platform_reason,
        }

    def close(self) -> None:
        """Release the launch namespace (tests; a server keeps it for its lifetime)."""
        self._host.launch_ns.close()

    # -- Driver -----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        validate_spec(spec)
        run = self._host.run_dir(spec.sandbox_id)
        async with self._lock(spec.sandbox_id):
            with operation("create", self._op_timeout + self._ready_timeout) as deadline:
                owned: list[bool] = []
                done = False
                try:
                    restart = False
                    if self.net is not None:  # domain sets before the rules naming them
                        policy = self.net.policy(spec.network)
                        restart = await self.net.want(spec.sandbox_id, policy, wait=False)
                    init = await anyio.to_thread.run_sync(
                        self._host.create, run, spec, owned, deadline
                    )
                    await self._wait_ready(run, init)
                    if restart and self.net is not None:  # new domains: restarted meanwhile
                        await self.net.resolvers_ready()
                    done = True
                    return SandboxInfo(SandboxState.RUNNING, run.socket, init.pid, OWNER)
                finally:
                    if not done:
                        with anyio.CancelScope(shield=True):
                            if owned:
                                await anyio.to_thread.run_sync(self._host.destroy, run)
                            if self.net is not None:
                                await self.net.settle(spec.sandbox_id, None)

    async def start(self, sandbox_id: str) -> SandboxInfo:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("start", self._op_timeout + self._ready_timeout) as deadline:
                record = await self._record(run)
                current = await anyio.to_thread.run_sync(self._host.observe, run, record)
                if current.state is SandboxState.RUNNING:
                    return current
                if current.state is SandboxState.PAUSED:
                    raise SandboxStateError("sandbox is paused", "resume it instead")
                done = False
                try:
                    init = await anyio.to_thread.run_sync(self._host.start, run, record, deadline)
                    await self._wait_ready(run, init)
                    done = True
                    return SandboxInfo(SandboxState.RUNNING, run.socket, init.pid, OWNER)
                finally:
                    if not done:
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self._host.stop, run, record)

    async def stop(self, sandbox_id: str) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("stop", self._op_timeout):
                record = await self._record(run)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._host.stop, run, record)

    async def destroy(self, sandbox_id: str) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("destroy", self._op_timeout), anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._host.destroy, run)
                if self.net is not None:
                    await self.net.settle(sandbox_id, None)
        self._lock.forget(sandbox_id)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        run = self._host.run_dir(sandbox_id)
        with operation("inspect", self._op_timeout):
            return await anyio.to_thread.run_sync(self._host.inspect, run)

    async def recover(self) -> dict[str, SandboxInfo]:
        with operation("recover", self._op_timeout):
            return await anyio.to_thread.run_sync(self._host.recover)

    # -- Pausable, Observable, Retargetable -------------------------------------------------

    async def pause(self, sandbox_id: str) -> None:
        await self._set_frozen(sandbox_id, frozen=True)

    async def resume(self, sandbox_id: str) -> None:
        await self._set_frozen(sandbox_id, frozen=False)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        run = self._host.run_dir(sandbox_id)
        with operation("stats", self._op_timeout):
            record = await self._record(run)
            return await anyio.to_thread.run_sync(self._host.stats, record)

    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        check_hostname(hostname)
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("retarget", self._op_timeout) as deadline:
                record = await self._record(run)
                await anyio.to_thread.run_sync(
                    self._host.retarget, run, record, hostname, cpu, mem_mb, env, deadline
                )

    # -- helpers ----------------------------------------------------------------------------

    async def _record(self, run: GvisorRun) -> SandboxRecord:
        record = await anyio.to_thread.run_sync(read_record, run)
        if record is None:
            raise SandboxNotFoundError(f"no sandbox {run.sandbox_id} on this node")
        return record

    async def _set_frozen(self, sandbox_id: str, *, frozen: bool) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("pause" if frozen else "resume", self._op_timeout) as deadline:
                record = await self._record(run)
                await anyio.to_thread.run_sync(self._host.set_frozen, run, record, frozen, deadline)

    async def _wait_ready(self, run: GvisorRun, init: ProcessRef) -> None:
        await wait_for_agent(
            functools.partial(wait_until_ready, run.socket, owner_uid=OWNER, alive=init.alive),
            seconds=self._ready_timeout,
            socket=run.socket,
            log_tail=run.log_tail,
        )

    # -- Networked (the namespace driver's machinery; docs/network.md) ----------------------

    async def netns_path(self, sandbox_id: str) -> Path:
        """The namespace the server made for the sandbox. Not the sandbox's loopback: that
        lives in gVisor's netstack, which no host namespace reaches."""
        run = self._host.run_dir(sandbox_id)
        with operation("netns", self._op_timeout):
            if await anyio.to_thread.run_sync(os.path.ismount, run.netns):
                return run.netns
        raise SandboxStateError("the sandbox has no network namespace now", sandbox_id)
