"""The ``namespace`` driver: Linux namespaces via bubblewrap, cgroups, seccomp, an ext4 disk.

This is the async half: the public API, deadlines, locking, readiness and cleanup rules. The
blocking work lives in ``host.py`` (and each mechanism in its own module). The rules:

* Blocking work (cgroupfs and procfs writes, mount, spawning) runs in worker threads via
  ``anyio.to_thread``; each such call gets an absolute deadline because a thread cannot be
  cancelled. Every public operation runs under ``anyio.fail_after``.
* A failed ``create`` (or ``start``) leaves nothing behind: cleanup runs in a shielded scope,
  so even a cancelled caller cannot interrupt it half-way.
* Operations on one sandbox are serialised by a per-sandbox lock; different sandboxes proceed
  in parallel.
* Host errors (``OSError``) surface as :class:`DriverError` with the operation's name, so
  callers handle one exception tree.
* All state needed after a restart is on disk (``state.py``); the only in-memory state here
  is the lock table.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio
import anyio.to_thread

from voidrun_server.drivers.base import (
    DriverUnavailableError,
    LayerExport,
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
from voidrun_server.drivers.namespace import export, idmount
from voidrun_server.drivers.namespace.bwrap import DEFAULT_CAPS, find_bwrap, install_bwrap
from voidrun_server.drivers.namespace.cgroups import detect_cgroups
from voidrun_server.drivers.namespace.host import SandboxHost, check_traversable
from voidrun_server.drivers.namespace.network import NetworkConfig
from voidrun_server.drivers.namespace.networking import Networking
from voidrun_server.drivers.namespace.ports import NetnsPorts
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.ready import wait_until_ready
from voidrun_server.drivers.namespace.seccomp import compile_bpf
from voidrun_server.drivers.namespace.state import (
    RunDir,
    SandboxRecord,
    read_record,
)
from voidrun_server.drivers.namespace.uidrange import (
    DEFAULT_FIRST_BASE,
    DEFAULT_MAX_RANGES,
    UidRanges,
)
from voidrun_server.drivers.namespace.usage import unwritten_bytes
from voidrun_server.drivers.namespace.userns import find_setpriv
from voidrun_server.drivers.namespace.wired import WiredSandboxes
from voidrun_server.drivers.namespace.zygote import Zygote, ZygoteConfig, capability_mask

__all__ = ["NamespaceDriver", "check_host"]

log = logging.getLogger(__name__)

EXPORT_MB_PER_SECOND = 20


def _check_privileges() -> None:
    if os.geteuid() != 0:
        raise DriverUnavailableError(
            "the namespace driver needs root (cgroups, loop mounts, uid maps)",
            hint="run the server as root (it drops each sandbox to an unprivileged uid range)",
        )
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            enabled = int(f.read()) > 0
    except FileNotFoundError:
        enabled = False
    if not enabled:
        raise DriverUnavailableError(
            "user namespaces are unavailable",
            hint="a kernel with CONFIG_USER_NS=y and sysctl user.max_user_namespaces > 0",
        )


def check_host() -> None:
    """Raise DriverUnavailableError unless this host can run the driver at all."""
    _check_privileges()
    find_bwrap()
    idmount.check_support()
    compile_bpf()
    detect_cgroups("voidrun")


class NamespaceDriver(NetnsPorts, WiredSandboxes):
    """Sandboxes as namespaced process trees on this host (see the package docstring);
    ``open_port`` (the preview proxy's way in) comes from ``ports.py``."""

    name = "namespace"
    _host: SandboxHost

    def __init__(
        self,
        state_dir: Path,
        *,
        agent_argv: Callable[[str], list[str]],
        agent_dir: Path,
        runtime_dir: Path | None = None,
        uid_base: int = DEFAULT_FIRST_BASE,
        uid_ranges: int = DEFAULT_MAX_RANGES,
        subid_files: Sequence[Path] = (Path("/etc/subuid"), Path("/etc/subgid")),
        ready_timeout: float = 10.0,
        op_timeout: float = 30.0,
        cgroup_parent: str = "voidrun",
        pids_max: int = 1024,
        env_file_option: str | None = "--env-file",
        network: NetworkConfig | None = None,
        ca_bundle: Path | None = None,
        zygote: ZygoteConfig | None = None,
        networking: Callable[[], Networking | None] | None = None,
    ) -> None:
        """Check the host and prepare; raises DriverUnavailableError with a hint if it can't.

        ``agent_argv(socket_path)`` is the agent's command line inside the sandbox and
        ``agent_dir`` (the agent package) is bind-mounted read-only at
        /opt/voidrun/voidrun_agent; ``runtime_dir`` (the agent's interpreter, if given) at
        /opt/voidrun/runtime. ``env_file_option`` is appended to that command line with
        the in-sandbox path of the JSON env file (None: do not pass it). ``cgroup_parent`` names
        the server's parent group in every hierarchy; ``pids_max`` caps processes per sandbox.
        Each sandbox gets its own range of 65,536 host uids: ``uid_ranges`` slots from
        ``uid_base``, skipping every range listed in ``subid_files`` (``uidrange.py``).
        ``network``: wire each sandbox to the host under an egress policy (docs/network.md);
        None keeps sandboxes loopback-only; ``networking``: the server's shared network
        (``drivers/netshare.py``) instead of one of its own. ``ca_bundle`` is what sandboxes
        trust for TLS.
        ``zygote``: fork each agent from one warm interpreter (``zygote.py``) instead of
        starting ``agent_argv`` in every sandbox.
        """
        _check_privileges()
        idmount.check_support()
        try:
            uids = UidRanges(
                state_dir.resolve() / ".uid-ranges",
                first=uid_base,
                max_ranges=uid_ranges,
                subid_files=subid_files,
            )
        except ValueError as exc:
            raise DriverUnavailableError(
                str(exc), hint="choose VOIDRUN_SANDBOX_UID_BASE/_UID_RANGES below 2^32"
            ) from exc
        state_dir = state_dir.resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        agent_dir = agent_dir.resolve()
        # Any sandbox uid will do: none of them owns anything on the way.
        check_traversable(state_dir, uid_base, "state_dir")
        check_traversable(agent_dir, uid_base, "agent_dir")
        if runtime_dir is not None:
            runtime_dir = runtime_dir.resolve()
            check_traversable(runtime_dir, uid_base, "runtime_dir")
        if ca_bundle is not None:
            ca_bundle = ca_bundle.resolve()
            if not ca_bundle.is_file():
                raise DriverUnavailableError(
                    f"CA bundle {ca_bundle} not found",
                    hint="set VOIDRUN_SANDBOX_CA_BUNDLE to a PEM file (or to nothing)",
                )
            check_traversable(ca_bundle.parent, uid_base, "ca_bundle")
            if not ca_bundle.stat().st_mode & 0o004:
                raise DriverUnavailableError(
                    f"CA bundle {ca_bundle} is not world-readable", hint=f"chmod o+r {ca_bundle}"
                )
        cgroups = detect_cgroups(cgroup_parent)
        cgroups.ensure_parent()
        bpf = compile_bpf()
        forks = None
        if zygote is not None:
            forks = Zygote(zygote, state_dir, bpf, capability_mask(DEFAULT_CAPS))
            forks.start()
        self._host = SandboxHost(
            state_dir,
            uids=uids,
            bwrap=install_bwrap(find_bwrap(), state_dir / ".bwrap"),
            bpf=bpf,
            cgroups=cgroups,
            setpriv=find_setpriv(),
            agent_argv=agent_argv,
            agent_dir=agent_dir,
            runtime_dir=runtime_dir,
            env_file_option=env_file_option,
            pids_max=pids_max,
            ca_bundle=ca_bundle,
            zygote=forks,
        )
        # the shared network is made (or joined) only once every check above passed: a
        # driver that cannot run here must leave no bridge or table behind
        self.net: Networking | None = networking() if networking is not None else None
        if self.net is None and network is not None:
            self.net = Networking(state_dir, network, [state_dir])
        if self.net is not None:
            self._host.network = self.net.host
        self.network_enabled = self.net is not None
        self._ready_timeout = ready_timeout
        self._op_timeout = op_timeout
        self._lock = SandboxLocks()

    @property
    def state_dir(self) -> Path:
        return self._host.state_dir

    def close(self) -> None:
        """Stop the agent fork server and release the network's sockets and threads (tests; a
        server keeps them for its lifetime); running sandboxes are not affected."""
        if self._host.zygote is not None:
            self._host.zygote.close()
        self._host.launch_ns.close()
        if self.net is not None:
            self.net.host.close()

    def unwritten_disk_bytes(self) -> int:
        """Host space the sparse sandbox disks may still claim (``DiskAccounting``)."""
        return unwritten_bytes(self._host.state_dir)

    @property
    def uid_ranges(self) -> UidRanges:
        """Where sandboxes' host uid ranges come from (each sandbox's own is on its
        :class:`SandboxInfo` as ``agent_socket_owner``)."""
        return self._host.uids

    @property
    def cgroup_version(self) -> int:
        return self._host.cgroups.version

    # -- Driver -----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        validate_spec(spec)
        run = self._host.run_dir(spec.sandbox_id)
        async with self._lock(spec.sandbox_id):
            with operation("create", self._op_timeout + self._ready_timeout) as deadline:
                owned: list[bool] = []  # non-empty once the run dir is ours to clean up
                done = False
                try:
                    restart = False
                    if self.net is not None:  # domain sets before the rules naming them
                        policy = self.net.policy(spec.network)
                        restart = await self.net.want(spec.sandbox_id, policy, wait=False)
                    init, owner = await anyio.to_thread.run_sync(
                        self._host.create, run, spec, owned, deadline
                    )
                    await self._wait_ready(run, init, owner)
                    if restart and self.net is not None:  # new domains: restarted meanwhile
                        await self.net.resolvers_ready()
                    done = True
                    return SandboxInfo(SandboxState.RUNNING, run.socket, init.pid, owner)
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
                    await self._wait_ready(run, init, record.uid_base)
                    done = True
                    return SandboxInfo(SandboxState.RUNNING, run.socket, init.pid, record.uid_base)
                finally:
                    if not done:  # back to STOPPED, disk kept
                        with anyio.CancelScope(shield=True):
                            await anyio.to_thread.run_sync(self._host.stop, run, record)

    async def stop(self, sandbox_id: str) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("stop", self._op_timeout):
                record = await self._record(run)
                with anyio.CancelScope(shield=True):  # never leave it half-stopped
                    await anyio.to_thread.run_sync(self._host.stop, run, record)

    async def destroy(self, sandbox_id: str) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            # Shielded: a half-destroyed sandbox is the worst outcome. The worker bounds its
            # own waits (host.CLEANUP_TIMEOUT), so this cannot hang forever.
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

    # -- Pausable, Observable ---------------------------------------------------------------

    async def pause(self, sandbox_id: str) -> None:
        await self._set_frozen(sandbox_id, frozen=True)

    async def resume(self, sandbox_id: str) -> None:
        await self._set_frozen(sandbox_id, frozen=False)

    async def export_layer(self, sandbox_id: str, dest: Path, *, uid_base: int) -> LayerExport:
        """``Exportable`` (``export.py``). The deadline allows 20 MB/s for a full disk."""
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("snapshot", self._op_timeout):
                record = await self._record(run)
            seconds = self._op_timeout + record.disk_mb / EXPORT_MB_PER_SECOND
            with operation("snapshot", seconds) as deadline:
                # Not abandoned on cancel: the worker thaws the sandbox before it returns.
                return await anyio.to_thread.run_sync(
                    export.export_layer, self._host, run, record, dest, uid_base, deadline
                )

    async def stats(self, sandbox_id: str) -> SandboxStats:
        run = self._host.run_dir(sandbox_id)
        with operation("stats", self._op_timeout):
            record = await self._record(run)
            return await anyio.to_thread.run_sync(self._host.stats, record)

    # -- helpers ----------------------------------------------------------------------------

    async def _record(self, run: RunDir) -> SandboxRecord:
        record = await anyio.to_thread.run_sync(read_record, run)
        if record is None:
            raise SandboxNotFoundError(f"no sandbox {run.sandbox_id} on this node")
        return record

    async def _wait_ready(self, run: RunDir, init: ProcessRef, owner: int) -> None:
        await wait_for_agent(
            functools.partial(wait_until_ready, run.socket, owner_uid=owner, alive=init.alive),
            seconds=self._ready_timeout,
            socket=run.socket,
            log_tail=run.log_tail,
        )

    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        run = self._host.run_dir(sandbox_id)
        check_hostname(hostname)
        async with self._lock(sandbox_id):
            with operation("retarget", self._op_timeout):
                record = await self._record(run)
                await anyio.to_thread.run_sync(
                    self._host.retarget, run, record, hostname, cpu, mem_mb, env
                )

    async def _set_frozen(self, sandbox_id: str, *, frozen: bool) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("pause" if frozen else "resume", self._op_timeout) as deadline:
                record = await self._record(run)
                await anyio.to_thread.run_sync(self._host.set_frozen, run, record, frozen, deadline)

    # -- Networked --------------------------------------------------------------------------

    async def netns_path(self, sandbox_id: str) -> Path:
        run = self._host.run_dir(sandbox_id)
        with operation("netns", self._op_timeout):
            if self.net is not None and await anyio.to_thread.run_sync(os.path.ismount, run.netns):
                return run.netns
            info = await self.inspect(sandbox_id)  # loopback-only: the sandbox's own
            if info.pid is None:
                raise SandboxStateError("the sandbox is not running", sandbox_id)
            return Path(f"/proc/{info.pid}/ns/net")
