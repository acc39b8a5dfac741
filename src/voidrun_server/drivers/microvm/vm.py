"""The blocking half of the microvm driver: run directories, disks, cgroups, QEMU processes.

Every function here runs in a worker thread (``anyio.to_thread``) and takes an absolute
``deadline`` (``time.monotonic()``) for anything that waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import (
    DriverError,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    SandboxStats,
)
from voidrun_server.drivers.microvm import disks
from voidrun_server.drivers.microvm.assets import GuestAssets
from voidrun_server.drivers.microvm.qemu import VmConfig, qemu_argv, unprivileged
from voidrun_server.drivers.microvm.state import Phase, RunDir, VmRecord, read_record, write_record
from voidrun_server.drivers.namespace.cgroups import Cgroups
from voidrun_server.drivers.namespace.cgroups.base import CgroupLimits
from voidrun_server.drivers.namespace.disk import DiskTemplates, provision_image
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.uidrange import UidRanges

__all__ = ["VmHost"]

Env = Mapping[str, str]

STOP_GRACE = 2.0  # SIGTERM (QEMU flushes its block layer and exits), then SIGKILL
PIDS_MAX = 256  # QEMU's threads (vCPUs, I/O workers)


class _DetachedPopen(subprocess.Popen[bytes]):
    """QEMU outlives this object and the server: reaped by pid, no "still running" warning."""

    def __del__(self) -> None:
        pass


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class VmHost:
    state_dir: Path
    cache_dir: Path
    assets: GuestAssets
    accelerator: str
    agent_disk: Path
    agent_argv: Sequence[str]
    uids: UidRanges
    cgroups: Cgroups
    overhead_mb: int
    tb_mb: int = 32

    def run_dir(self, sandbox_id: str) -> RunDir:
        return RunDir.of(self.state_dir, sandbox_id)

    def uid_owner(self, sandbox_id: str) -> str:
        # a "/" keeps the namespace driver's stale-marker sweep off microvm slots
        return f"microvm/{sandbox_id}"

    # -- create / boot ------------------------------------------------------------------------

    def image(self, spec: SandboxSpec, deadline: float) -> Path:
        """The image's read-only disk (built on first use)."""
        return disks.image_disk(self.cache_dir, spec.rootfs, spec.layers, deadline)

    def prepare(
        self, spec: SandboxSpec, image: Path, owned: list[bool], disk_source: Path | None = None
    ) -> tuple[RunDir, VmRecord]:
        """Run directory, uid, record and the sandbox disk: a fresh one of ``disk_mb``, or a
        copy of ``disk_source`` (a template's disk, see ``template.py``)."""
        run = self.run_dir(spec.sandbox_id)
        (self.state_dir / "sandboxes").mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            run.root.mkdir(mode=0o711)
        except FileExistsError as exc:
            raise DriverError("sandbox already exists", spec.sandbox_id) from exc
        owned.append(True)
        uid = self.uids.allocate(self.uid_owner(spec.sandbox_id))
        record = VmRecord(
            sandbox_id=spec.sandbox_id,
            hostname=spec.hostname,
            cpu=spec.cpu,
            mem_mb=spec.mem_mb,
            disk_mb=spec.disk_mb,
            uid=uid,
            image_disk=str(image),
            env=dict(spec.env),
        )
        write_record(run, record)
        if disk_source is None:
            disk_source = DiskTemplates(self.state_dir / ".templates").get(spec.disk_mb)
        provision_image(disk_source, run.disk)
        os.chown(run.disk, uid, uid)
        run.sock_dir.mkdir(mode=0o700)
        os.chown(run.sock_dir, uid, uid)
        return run, record

    def create(self, spec: SandboxSpec, owned: list[bool], deadline: float) -> ProcessRef:
        """A cold boot: prepare, then :meth:`boot`."""
        run, record = self.prepare(spec, self.image(spec, deadline), owned)
        return self.boot(run, record)

    def boot(
        self,
        run: RunDir,
        record: VmRecord,
        *,
        ram_file: Path | None = None,
        ram_shared: bool = False,
        incoming_fd: int | None = None,
        pass_fds: Sequence[int] = (),
    ) -> ProcessRef:
        """Start QEMU on the kept disk; the record says RUNNING with its pid. A cold boot
        unless ``incoming_fd`` (an fd in ``pass_fds``) holds a template's device state."""
        env_json = json.dumps(record.env, separators=(",", ":"))
        disks.config_disk(run.config, record.hostname, env_json, self.agent_argv, record.uid)
        for path in (run.agent_socket, run.control_socket, run.qmp_socket):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        fd = os.open(run.console, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchown(fd, record.uid, record.uid)
        os.close(fd)
        limits = CgroupLimits(record.cpu, record.mem_mb + self.overhead_mb, PIDS_MAX)
        paths = self.cgroups.paths_for(record.sandbox_id)
        if not self.cgroups.exists(paths):
            paths = self.cgroups.create(record.sandbox_id, limits)
        record.cgroups = paths
        config = VmConfig(
            accelerator=self.accelerator,
            assets=self.assets,
            cpu=record.cpu,
            mem_mb=record.mem_mb,
            image_disk=Path(record.image_disk),
            agent_disk=self.agent_disk,
            data_disk=run.disk,
            config_disk=run.config,
            # relative to QEMU's cwd (the socket dir): sun_path holds only 107 bytes
            agent_socket=Path(run.agent_socket.name),
            control_socket=Path(run.control_socket.name),
            qmp_socket=Path(run.qmp_socket.name),
            console=run.console,
            ram_file=ram_file,
            ram_shared=ram_shared,
            incoming_fd=incoming_fd,
            tb_mb=self.tb_mb,
        )
        log_fd = os.open(run.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            with self.cgroups.born_inside(paths) as inside:
                popen = _DetachedPopen(
                    unprivileged(qemu_argv(config), record.uid),
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                    start_new_session=True,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                    cwd=run.sock_dir,
                    pass_fds=tuple(pass_fds),
                )
        finally:
            os.close(log_fd)
        try:
            if not inside:
                self.cgroups.attach(paths, popen.pid)
            proc = ProcessRef.of(popen.pid)
            if proc is None:
                raise DriverError("QEMU exited at once", run.log_tail())
        except BaseException:
            popen.kill()
            popen.wait()
            raise
        record.process = proc.to_json()
        record.phase = Phase.RUNNING.value
        record.paused = False
        record.ram_mb, record.vcpus = record.mem_mb, record.cpu
        write_record(run, record)
        return proc

    def retarget(
        self, run: RunDir, record: VmRecord, hostname: str, cpu: int, mem_mb: int, env: Env
    ) -> None:
        """A warm-pool VM becomes a caller's (the guest side is done over the agent's control
        port): the CPU quota now; the RAM stays the VM's own (``-m`` cannot grow, and a
        cgroup below it would have the host kill the VM instead of the guest an offender),
        so ``mem_mb`` and ``cpu`` take effect as the VM's shape at its next boot. The
        config disk is written again so a next boot has the new name and environment."""
        ram = record.ram_mb or record.mem_mb
        self.cgroups.set_limits(record.cgroups, CgroupLimits(cpu, ram + self.overhead_mb, PIDS_MAX))
        record.hostname, record.cpu, record.mem_mb, record.env = hostname, cpu, mem_mb, dict(env)
        env_json = json.dumps(record.env, separators=(",", ":"))
        disks.config_disk(run.config, hostname, env_json, self.agent_argv, record.uid)
        write_record(run, record)

    # -- stop / destroy -----------------------------------------------------------------------

    def halt(self, run: RunDir, record: VmRecord, deadline: float) -> None:
        """End QEMU (SIGTERM, then SIGKILL after a grace), remove its cgroups; disk kept."""
        proc = record.qemu
        if proc is not None and proc.kill(signal.SIGTERM):
            grace = min(deadline, time.monotonic() + STOP_GRACE)
            while proc.alive() and time.monotonic() < grace:
                _reap(proc.pid)
                time.sleep(0.01)
            proc.kill(signal.SIGKILL)
            while proc.alive() and time.monotonic() < deadline:
                _reap(proc.pid)
                time.sleep(0.005)
            _reap(proc.pid)
        if record.cgroups:
            self.cgroups.remove(record.cgroups, deadline)
        record.process = None
        record.paused = False
        record.phase = Phase.STOPPED.value
        write_record(run, record)

    def destroy(self, sandbox_id: str, deadline: float) -> None:
        run = self.run_dir(sandbox_id)
        record = read_record(run)
        if record is not None:
            self.halt(run, record, deadline)
        paths = self.cgroups.paths_for(sandbox_id)
        if self.cgroups.exists(paths):
            self.cgroups.remove(paths, deadline)
        self.uids.release(self.uid_owner(sandbox_id))
        shutil.rmtree(run.root, ignore_errors=True)
        if run.root.exists():
            raise DriverError("cannot remove the sandbox directory", str(run.root))

    # -- observation --------------------------------------------------------------------------

    def observe(self, run: RunDir, record: VmRecord | None) -> SandboxInfo:
        if record is None:
            return SandboxInfo(SandboxState.GONE, run.agent_socket, None, None)
        proc = record.qemu
        if record.phase == Phase.STOPPED.value:
            return SandboxInfo(SandboxState.STOPPED, run.agent_socket, None, record.uid)
        if proc is None or not proc.alive():
            if proc is not None:
                _reap(proc.pid)
            return SandboxInfo(SandboxState.GONE, run.agent_socket, None, record.uid)
        state = SandboxState.PAUSED if record.paused else SandboxState.RUNNING
        return SandboxInfo(state, run.agent_socket, proc.pid, record.uid)

    def inspect(self, sandbox_id: str) -> SandboxInfo:
        run = self.run_dir(sandbox_id)
        return self.observe(run, read_record(run))

    def recover(self) -> dict[str, SandboxInfo]:
        found: dict[str, SandboxInfo] = {}
        root = self.state_dir / "sandboxes"
        for entry in sorted(root.iterdir()) if root.is_dir() else ():
            found[entry.name] = self.inspect(entry.name)
        return found

    def stats(self, record: VmRecord) -> SandboxStats:
        paths = record.cgroups or self.cgroups.paths_for(record.sandbox_id)
        host = self.cgroups.stats(paths)
        return SandboxStats(
            memory_bytes=host.memory_bytes,
            # the guest's RAM is the sandbox's limit
            memory_limit_bytes=(record.ram_mb or record.mem_mb) << 20,
            cpu_usage_ns=host.cpu_usage_ns,
            pids=host.pids,
            oom_kills=host.oom_kills,
        )
