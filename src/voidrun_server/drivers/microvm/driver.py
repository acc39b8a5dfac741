"""The ``microvm`` driver: each sandbox is a QEMU ``-M microvm`` guest with its own kernel.

The async half: public API, deadlines, per-sandbox locks, readiness, cleanup on failure (the
same rules as the namespace driver, whose docstring explains them). Blocking work is in
``vm.py``; the guest's pieces in ``assets.py``, ``disks.py``, ``guest_init.py``, ``qemu.py``.

Lifecycle: create clones a snapshot template of the sandbox's shape (``clones.py``), or
cold-boots when there is none and none can be made; pause/resume are QMP
``stop``/``cont`` (the guest's clock and every process stop together); stop ends QEMU and
keeps the sandbox disk; start boots again from it; a restarted server re-adopts running VMs
from ``record.json`` (pid + start time; QMP and the agent are Unix sockets in the run dir).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from voidrun_server.agent_launch import DEFAULT_MOUNT_DIR, bootstrap_code
from voidrun_server.agentclient import AgentClient
from voidrun_server.drivers.base import (
    DriverError,
    DriverTimeoutError,
    DriverUnavailableError,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
)
from voidrun_server.drivers.common import SandboxLocks, check_hostname, operation, validate_spec
from voidrun_server.drivers.microvm import disks
from voidrun_server.drivers.microvm.assets import prepare_assets
from voidrun_server.drivers.microvm.clones import Cloner, identify_at
from voidrun_server.drivers.microvm.qemu import find_tools, probe_kvm
from voidrun_server.drivers.microvm.qmp import QmpClient
from voidrun_server.drivers.microvm.state import RunDir, VmRecord, read_record, write_record
from voidrun_server.drivers.microvm.vm import VmHost
from voidrun_server.drivers.namespace.cgroups import detect_cgroups
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.state import SANDBOX_ID_RE
from voidrun_server.drivers.namespace.uidrange import (
    DEFAULT_FIRST_BASE,
    DEFAULT_MAX_RANGES,
    UidRanges,
)

__all__ = ["MicrovmDriver", "check_host"]

log = logging.getLogger(__name__)
ACCELERATORS = ("auto", "kvm", "tcg")


def check_host() -> None:
    """Raise DriverUnavailableError unless this host can run the driver at all."""
    if os.geteuid() != 0:
        raise DriverUnavailableError(
            "the microvm driver needs root (cgroups, idmapped mounts, per-VM uids)",
            hint="run the server as root (each QEMU runs as its own unprivileged uid)",
        )
    find_tools()


class MicrovmDriver:
    name = "microvm"

    def __init__(
        self,
        state_dir: Path,
        *,
        agent_dir: Path,
        runtime_dir: Path,
        agent_python: Sequence[str],
        cache_dir: Path | None = None,
        kernel_package: str = "linux-image-cloud-amd64",
        accelerator: str = "auto",
        probe_timeout: float = 20.0,
        boot_timeout: float = 60.0,
        image_timeout: float = 900.0,
        op_timeout: float = 30.0,
        qemu_overhead_mb: int = 256,
        cgroup_parent: str = "voidrun-microvm",
        uid_dir: Path | None = None,
        uid_base: int = DEFAULT_FIRST_BASE,
        uid_ranges: int = DEFAULT_MAX_RANGES,
        subid_files: Sequence[Path] = (Path("/etc/subuid"), Path("/etc/subgid")),
        clones: bool = True,
        tcg_tb_mb: int = 32,
    ) -> None:
        """Check the host, fetch the guest kernel (apt) and build the initramfs and the agent
        disk if they are not cached yet (blocking: seconds the first time), and pick the
        accelerator. ``agent_python`` is the agent interpreter's argv inside the guest (the
        bundled runtime under /opt/voidrun/runtime, ``Runtime.python_argv()``). Each VM's QEMU
        runs as the first uid of a range from ``uid_dir`` (share the namespace driver's
        ``.uid-ranges`` so both drivers hand out disjoint uids). ``cache_dir`` (default
        ``<state_dir>/cache``) holds what VMs share: kernel, initramfs, image and agent disks.
        ``clones``: create by cloning a snapshot template per shape (``clones.py``) instead of
        a cold boot each time. ``tcg_tb_mb``: TCG's translation cache per VM."""
        check_host()
        if accelerator not in ACCELERATORS:
            raise DriverUnavailableError(
                f"unknown accelerator {accelerator!r}", hint=f"one of {', '.join(ACCELERATORS)}"
            )
        state_dir = state_dir.resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o711)
        cache_dir = (cache_dir or state_dir / "cache").resolve()
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cache_dir, 0o755)
        assets = prepare_assets(cache_dir / "assets", kernel_package)
        if accelerator == "auto":
            accelerator = probe_kvm(assets, cache_dir / "assets", probe_timeout)
        self.accelerator = accelerator
        try:
            uids = UidRanges(
                (uid_dir or state_dir / ".uid-ranges").resolve(),
                first=uid_base,
                max_ranges=uid_ranges,
                subid_files=subid_files,
            )
        except ValueError as exc:
            raise DriverUnavailableError(str(exc), hint="choose another uid base") from exc
        cgroups = detect_cgroups(cgroup_parent)
        cgroups.ensure_parent()
        agent_argv = [*agent_python, "-I", "-S", "-c", bootstrap_code(DEFAULT_MOUNT_DIR)]
        self._host = VmHost(
            state_dir=state_dir,
            assets=assets,
            accelerator=accelerator,
            cache_dir=cache_dir,
            agent_disk=disks.agent_disk(cache_dir, agent_dir.resolve(), runtime_dir.resolve()),
            agent_argv=agent_argv,
            uids=uids,
            cgroups=cgroups,
            overhead_mb=qemu_overhead_mb,
            tb_mb=tcg_tb_mb,
        )
        self._boot_timeout = boot_timeout
        self._image_timeout = image_timeout
        self._op_timeout = op_timeout
        self._lock = SandboxLocks()
        self._cloner = Cloner(self._host, self._wait_ready, op_timeout) if clones else None

    @property
    def state_dir(self) -> Path:
        return self._host.state_dir

    def describe(self) -> dict[str, Any]:
        """For ``GET /api/health``: how VMs run here."""
        return {
            "accelerator": self.accelerator,
            "isolation": "hardware" if self.accelerator == "kvm" else "emulated",
            "kernel": self._host.assets.kernel_release,
            "clones": self._cloner is not None,
        }

    def close(self) -> None:
        """Release the templates' memfds (running clones keep their own mappings)."""
        if self._cloner is not None:
            self._cloner.store.close()

    # -- Driver -----------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        validate_spec(spec, min_mem_mb=96)
        run = self._host.run_dir(spec.sandbox_id)
        async with self._lock(spec.sandbox_id):
            seconds = self._image_timeout + 2 * self._boot_timeout
            with operation("create", seconds) as deadline:
                owned: list[bool] = []
                done = False
                try:
                    if await anyio.to_thread.run_sync(run.root.exists):
                        raise DriverError("sandbox already exists", spec.sandbox_id)
                    image = await anyio.to_thread.run_sync(self._host.image, spec, deadline)
                    proc = await self._clone(spec, image, owned, deadline)
                    if proc is None:
                        proc = await anyio.to_thread.run_sync(self._cold, spec, image, owned)
                        record = await self._record(run)
                        await self._wait_ready(run, record, proc)
                    record = await self._record(run)
                    done = True
                    return SandboxInfo(SandboxState.RUNNING, run.agent_socket, proc.pid, record.uid)
                finally:
                    if not done and owned:
                        with anyio.CancelScope(shield=True):
                            cleanup = time.monotonic() + self._op_timeout
                            await anyio.to_thread.run_sync(
                                self._host.destroy, spec.sandbox_id, cleanup
                            )

    def _cold(self, spec: SandboxSpec, image: Path, owned: list[bool]) -> ProcessRef:
        run, record = self._host.prepare(spec, image, owned)
        return self._host.boot(run, record)

    async def _clone(
        self, spec: SandboxSpec, image: Path, owned: list[bool], deadline: float
    ) -> ProcessRef | None:
        """A clone of this shape's template (built first if needed); None: cold-boot instead
        (clones off, or the template could not be built or restored: logged)."""
        if self._cloner is None:
            return None
        try:
            template = await self._cloner.template(spec, image, deadline)
            _, _, proc = await self._cloner.clone(spec, image, template, owned)
            return proc
        except (DriverError, OSError) as exc:
            if isinstance(exc, DriverTimeoutError):
                raise
            log.warning("microvm: no clone for %s, cold boot instead: %s", spec.sandbox_id, exc)
            if owned:
                cleanup = time.monotonic() + self._op_timeout
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._host.destroy, spec.sandbox_id, cleanup)
                owned.clear()
            return None

    async def start(self, sandbox_id: str) -> SandboxInfo:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("start", self._op_timeout + self._boot_timeout) as deadline:
                record = await self._record(run)
                current = self._host.observe(run, record)
                if current.state is SandboxState.RUNNING:
                    return current
                if current.state is SandboxState.PAUSED:
                    raise SandboxStateError("sandbox is paused", "resume it instead")
                done = False
                try:
                    await anyio.to_thread.run_sync(self._host.halt, run, record, deadline)
                    proc = await anyio.to_thread.run_sync(self._host.boot, run, record)
                    await self._wait_ready(run, record, proc)
                    done = True
                    return SandboxInfo(SandboxState.RUNNING, run.agent_socket, proc.pid, record.uid)
                finally:
                    if not done:  # back to STOPPED, disk kept
                        with anyio.CancelScope(shield=True):
                            cleanup = time.monotonic() + self._op_timeout
                            await anyio.to_thread.run_sync(self._host.halt, run, record, cleanup)

    async def stop(self, sandbox_id: str) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("stop", self._op_timeout) as deadline:
                record = await self._record(run)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(self._host.halt, run, record, deadline)

    async def destroy(self, sandbox_id: str) -> None:
        if not SANDBOX_ID_RE.match(sandbox_id):
            return
        async with self._lock(sandbox_id):
            with (
                operation("destroy", self._op_timeout) as deadline,
                anyio.CancelScope(shield=True),
            ):
                await anyio.to_thread.run_sync(self._host.destroy, sandbox_id, deadline)
        self._lock.forget(sandbox_id)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        with operation("inspect", self._op_timeout):
            return await anyio.to_thread.run_sync(self._host.inspect, sandbox_id)

    async def recover(self) -> dict[str, SandboxInfo]:
        with operation("recover", self._op_timeout):
            return await anyio.to_thread.run_sync(self._host.recover)

    # -- Pausable, Observable ---------------------------------------------------------------

    async def pause(self, sandbox_id: str) -> None:
        await self._set_paused(sandbox_id, paused=True)

    async def resume(self, sandbox_id: str) -> None:
        await self._set_paused(sandbox_id, paused=False)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        run = self._host.run_dir(sandbox_id)
        with operation("stats", self._op_timeout):
            record = await self._record(run)
            return await anyio.to_thread.run_sync(self._host.stats, record)

    # -- Retargetable (the warm pool) ------------------------------------------------------

    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        """Hostname, clock, a CRNG reseed and the environment inside (``vm.identity`` over
        the agent's control port: the services hold its main port meanwhile), CPU quota
        outside; the guest's RAM stays what it booted with (``VmHost.retarget``)."""
        check_hostname(hostname)
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("retarget", self._op_timeout):
                record = await self._record(run)
                state = self._host.observe(run, record).state
                if state is not SandboxState.RUNNING:
                    raise SandboxStateError(f"sandbox is {state.value}", sandbox_id)
                await identify_at(run.control_socket, record.uid, hostname, env, self._op_timeout)
                await anyio.to_thread.run_sync(
                    self._host.retarget, run, record, hostname, cpu, mem_mb, env
                )

    # -- helpers ----------------------------------------------------------------------------

    async def _record(self, run: RunDir) -> VmRecord:
        record = await anyio.to_thread.run_sync(read_record, run)
        if record is None:
            raise SandboxNotFoundError(f"no sandbox {run.sandbox_id} on this node")
        return record

    async def _set_paused(self, sandbox_id: str, *, paused: bool) -> None:
        run = self._host.run_dir(sandbox_id)
        async with self._lock(sandbox_id):
            with operation("pause" if paused else "resume", self._op_timeout):
                record = await self._record(run)
                state = self._host.observe(run, record).state
                if state not in (SandboxState.RUNNING, SandboxState.PAUSED):
                    raise SandboxStateError(f"sandbox is {state.value}", sandbox_id)
                async with await QmpClient.connect(
                    run.qmp_socket, owner_uid=record.uid, within=self._op_timeout
                ) as qmp:
                    await qmp.execute("stop" if paused else "cont", within=self._op_timeout)
                record.paused = paused
                await anyio.to_thread.run_sync(write_record, run, record)

    async def _wait_ready(self, run: RunDir, record: VmRecord, proc: ProcessRef) -> None:
        """One agent handshake over the virtio-serial socket (QEMU accepts at once and holds
        the bytes until the guest opens its port), while watching QEMU stay alive."""
        outcome: list[BaseException | None] = []

        async def handshake() -> None:
            try:
                async with AgentClient(
                    run.agent_socket, connect_timeout=self._boot_timeout, owner_uid=record.uid
                ):
                    pass
                outcome.append(None)
            except Exception as exc:  # reported below, after the watcher stops
                outcome.append(exc)
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(handshake)
            while not outcome and proc.alive():  # noqa: ASYNC110 (a pid has no event to await)
                await anyio.sleep(0.05)
            if not outcome:
                tg.cancel_scope.cancel()
        if outcome and outcome[0] is None:
            return
        tail = await anyio.to_thread.run_sync(run.log_tail)
        if not outcome:
            raise DriverError("the VM exited before its agent answered", tail)
        raise DriverTimeoutError("the VM's agent did not answer", f"{outcome[0]}\n{tail}")
