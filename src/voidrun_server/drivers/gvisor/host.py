"""The blocking half of the gVisor driver: what runs in worker threads.

Each method is one step of a sandbox's life and takes an absolute ``deadline`` (a worker thread
cannot be cancelled). State lives on disk only (``layout.py`` + the namespace driver's
``state.json`` record, with ``uid_base`` 0 and ``init`` = the sentry process): a restarted
server finds everything again. ``stop`` leaves only files; ``destroy`` leaves nothing.

Killing goes through the sandbox's cgroups, never through ``runsc kill``/``delete``: the cgroup
holds the sentry, the gofer and the ptrace stubs, freezing it first means nothing escapes, and
``runsc delete`` took 1.5 s here (research notes) where the cgroup kill takes milliseconds.
runsc's own state for the sandbox is its private ``--root`` directory, removed with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from voidrun_server.drivers.base import (
    DriverError,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
)
from voidrun_server.drivers.gvisor import bundle
from voidrun_server.drivers.gvisor.layout import (
    GvisorRun,
    mount_lowers,
    mount_rootfs,
    remove_socket,
    unmount_all,
)
from voidrun_server.drivers.gvisor.runsc import Runsc
from voidrun_server.drivers.namespace import disk, netns
from voidrun_server.drivers.namespace.cgroups import CgroupLimits, Cgroups
from voidrun_server.drivers.namespace.mountns import LaunchNamespace
from voidrun_server.drivers.namespace.network import Attaching, HostNetwork
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.state import (
    SANDBOX_ENV_FILE,
    SANDBOX_SOCKET,
    Phase,
    SandboxRecord,
    read_record,
    sandbox_ids,
    write_record,
)

__all__ = ["GvisorHost"]

CLEANUP_TIMEOUT = 30.0
SENTRY_PIDS = 512  # host threads of the sentry and gofer themselves (Go), beyond the sandbox's
FREEZE_ATTEMPT_SECONDS = 2.0
OWNER = 0  # host uid of every file the gofer makes, the agent socket included (layout.py)


class GvisorHost:
    def __init__(
        self,
        state_dir: Path,
        *,
        runsc: Runsc,
        cgroups: Cgroups,
        agent_argv: Callable[[str], list[str]],
        agent_dir: Path,
        runtime_dir: Path | None,
        pids_max: int,
        network: HostNetwork | None = None,
    ) -> None:
        """``network``: wire each sandbox as the namespace driver does (its netns, veth and
        nftables chain); runsc then runs ``--network=sandbox`` in that namespace."""
        self.state_dir = state_dir
        self.network = network
        self.runsc = runsc
        self.cgroups = cgroups
        self._agent_argv = agent_argv
        self._agent_dir = agent_dir
        self._runtime_dir = runtime_dir
        self._pids_max = pids_max
        self._templates = disk.DiskTemplates(state_dir / ".templates")
        # runsc is spawned as bwrap is (namespace/mountns.py): from a small mount namespace
        # with this sandbox's mounts only. Its sentry and gofer (and the `unshare --mount` of
        # a wired start) then never hold copies of other sandboxes' disks, which would keep
        # their loop devices bound after their deletion, and the copy costs the same at any
        # sandbox count.
        data_root = state_dir.resolve().parent
        self.launch_ns = LaunchNamespace((data_root if data_root != Path("/") else state_dir,))
        self.launch_ns.prepare()

    def run_dir(self, sandbox_id: str) -> GvisorRun:
        return GvisorRun.at(self.state_dir, sandbox_id)

    # -- lifecycle --------------------------------------------------------------------------

    def create(
        self, run: GvisorRun, spec: SandboxSpec, owned: list[bool], deadline: float
    ) -> ProcessRef:
        for layer in (spec.rootfs, *spec.layers):
            if not layer.is_dir():
                raise DriverError("image root filesystem not found", str(layer))
        try:
            os.mkdir(run.root, 0o700)
        except FileExistsError as exc:
            raise SandboxStateError(f"sandbox {spec.sandbox_id} already exists") from exc
        owned.append(True)
        record = SandboxRecord(
            sandbox_id=spec.sandbox_id,
            hostname=spec.hostname,
            rootfs=str(spec.rootfs.resolve()),
            cpu=spec.cpu,
            mem_mb=spec.mem_mb,
            disk_mb=spec.disk_mb,
            uid_base=OWNER,
            phase=Phase.CREATING,
            layers=[str(layer.resolve()) for layer in spec.layers],
        )
        if self.network is not None:
            record.net_address = str(self.network.allocate())
            record.net_policy = spec.network.to_wire() if spec.network else None
        attaching = None
        try:
            if self.network is not None:  # namespace, link and rules while the disk is made
                attaching = self.network.begin_attach(run, record)
            try:
                disk.provision_image(self._templates.get(spec.disk_mb), run.disk_image)
                run.disk_mount.mkdir(mode=0o700)
                disk.mount_image(run.disk_image, run.disk_mount)
                disk.claim_layer(run.disk_mount, OWNER, OWNER)
                gateway = str(self.network.gateway) if self.network is not None else None
                _write_identity(run, spec.hostname, gateway)
                _write_env(run, spec.env)
            except BaseException:
                if attaching is not None:
                    attaching.undo()
                raise
            return self._launch(run, record, deadline, attaching)
        except BaseException:
            if self.network is not None:
                self.network.release(record.net_address)
            raise

    def start(self, run: GvisorRun, record: SandboxRecord, deadline: float) -> ProcessRef:
        self._kill(record, deadline)  # leftovers of a sandbox that died on its own
        if not os.path.ismount(run.disk_mount):
            disk.detach_loop_devices(run.disk_image, deadline)
            run.disk_mount.mkdir(mode=0o700, exist_ok=True)
            disk.mount_image(run.disk_image, run.disk_mount)
        remove_socket(run)
        return self._launch(run, record, deadline)

    def _launch(
        self,
        run: GvisorRun,
        record: SandboxRecord,
        deadline: float,
        attaching: Attaching | None = None,
    ) -> ProcessRef:
        """Mounts, bundle, cgroups, runsc. A wired sandbox's network is complete before runsc
        starts: with ``--network=sandbox`` runsc copies the namespace's interfaces, addresses
        and routes into gVisor's netstack at start (and takes the addresses off the kernel's
        interface, so only gVisor answers for them)."""
        if self.network is not None and record.net_address and attaching is None:
            attaching = self.network.begin_attach(run, record)
        try:
            if attaching is not None:
                attaching.wait()
            return self._launch_wired(run, record, deadline, attaching is not None)
        except BaseException:
            if attaching is not None:
                attaching.undo()
            raise

    def _launch_wired(
        self, run: GvisorRun, record: SandboxRecord, deadline: float, wired: bool
    ) -> ProcessRef:
        lowers = mount_lowers(run, [Path(record.rootfs), *map(Path, record.layers)], deadline)
        mount_rootfs(run, lowers)
        argv = [*self._agent_argv(SANDBOX_SOCKET), "--env-file", SANDBOX_ENV_FILE]
        spec = bundle.config(
            rootfs=run.rootfs,
            hostname=record.hostname,
            argv=argv,
            agent_dir=self._agent_dir,
            runtime_dir=self._runtime_dir,
            run_dir=run.run,
            pids_max=self._pids_max,
            netns=run.netns if wired else None,
        )
        bundle.write_config(run.bundle, spec)
        shutil.rmtree(run.runsc_root, ignore_errors=True)
        run.runsc_root.mkdir(mode=0o700)
        run.pid_file.unlink(missing_ok=True)
        limits = CgroupLimits(
            cpu=record.cpu, mem_mb=record.mem_mb, pids_max=2 * self._pids_max + SENTRY_PIDS
        )
        record.cgroups = self.cgroups.create(record.sandbox_id, limits)
        args = ["run", "--detach", f"--bundle={run.bundle}", f"--pid-file={run.pid_file}"]
        with self.cgroups.born_inside(record.cgroups) as inside:
            if not inside:  # cgroup v2 (not done yet: the sandbox would start unlimited)
                raise DriverError(
                    "the gvisor driver needs cgroup v1 placement",
                    "this host's cgroups cannot place a spawned process (cgroup v2)",
                )
            try:
                # runsc 20221219 copies the interfaces of the namespace its sandbox process is
                # born in (it does not join the spec's path for that): spawn it from in there.
                in_netns = netns.entered(run.netns) if wired else contextlib.nullcontext()
                # runsc reads the bundle's root and the log on the disk, and joins the
                # network namespace by its pin's path
                mounts = [run.disk_mount, *run.lower_mounts(), run.rootfs]
                mounts += [run.netns] if wired else []
                with in_netns, self.launch_ns.spawning(mounts):
                    self.runsc.call(
                        run.runsc_root,
                        *args,
                        record.sandbox_id,
                        deadline=deadline,
                        log=run.log_file,
                        network=wired,
                    )
            except DriverError as exc:
                raise type(exc)(exc.message, run.log_tail() or exc.details) from exc
        try:
            pid = int(run.pid_file.read_text().strip())
        except (OSError, ValueError) as exc:
            raise DriverError("runsc wrote no sandbox pid", str(exc)) from exc
        init = ProcessRef.of(pid)
        if init is None:
            raise DriverError("the sandbox exited at once", run.log_tail())
        record.init, record.monitor = init, None
        record.phase = Phase.RUNNING
        write_record(run, record)
        return init

    def _kill(self, record: SandboxRecord, deadline: float) -> None:
        self._kill_group(record.cgroups, deadline)

    def _kill_group(self, paths: dict[str, str], deadline: float) -> None:
        """SIGKILL everything in the sandbox's cgroups until they are empty, then remove them.

        Not the namespace driver's freeze-then-kill: a sentry that is dying (or was killed
        behind our back) leaves ptrace stubs that never reach FROZEN. Nothing here can fork
        once the sentry is gone (the stubs die with their tracer: PTRACE_O_EXITKILL), so
        killing whatever is listed until the list is empty terminates."""
        if self.cgroups.exists(paths):
            with contextlib.suppress(OSError):
                self.cgroups.thaw(paths)  # a frozen task acts on SIGKILL only once thawed
        while pids := self.cgroups.procs(paths):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                raise DriverError("sandbox processes did not exit after SIGKILL", str(pids))
            time.sleep(0.001)
        self.cgroups.remove(paths, deadline)

    def stop(self, run: GvisorRun, record: SandboxRecord) -> None:
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        self._kill(record, deadline)
        if self.network is not None and record.net_address:
            self.network.detach(run, record.sandbox_id, record)
        shutil.rmtree(run.runsc_root, ignore_errors=True)
        unmount_all(run, deadline)
        record.monitor = record.init = None
        record.phase = Phase.STOPPED
        write_record(run, record)

    def destroy(self, run: GvisorRun) -> None:
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        record = read_record(run)
        if record is not None:
            self._kill(record, deadline)
        self._kill_group(self.cgroups.paths_for(run.sandbox_id), deadline)
        if self.network is not None and run.root.exists():
            self.network.detach(run, run.sandbox_id, record)
            self.network.release(record.net_address if record else None)
        if not run.root.exists():
            return
        unmount_all(run, deadline)
        shutil.rmtree(run.root)

    # -- running sandboxes ------------------------------------------------------------------

    def set_frozen(
        self, run: GvisorRun, record: SandboxRecord, frozen: bool, deadline: float
    ) -> None:
        info = self.observe(run, record)
        wanted = SandboxState.PAUSED if frozen else SandboxState.RUNNING
        if info.state is wanted:
            return
        if info.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            raise SandboxStateError(f"sandbox is {info.state.value}", "start it first")
        if frozen:
            self._freeze(record.cgroups, deadline)
        else:
            self.cgroups.thaw(record.cgroups)
        record.phase = Phase.PAUSED if frozen else Phase.RUNNING
        write_record(run, record)

    def _freeze(self, paths: dict[str, str], deadline: float) -> None:
        """The cgroup freezer, in short attempts. Under the ptrace platform a stub stopped
        for its tracer (the sentry) cannot freeze once that sentry thread froze first: the
        group then stays FREEZING. An attempt that does not complete is thawed (``freeze``
        does that), the stubs run on, and the next attempt usually finds them in between."""
        while True:
            attempt = min(deadline, time.monotonic() + FREEZE_ATTEMPT_SECONDS)
            try:
                self.cgroups.freeze(paths, attempt)
                return
            except DriverError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.02)

    def retarget(
        self,
        run: GvisorRun,
        record: SandboxRecord,
        hostname: str,
        cpu: int,
        mem_mb: int,
        env: Mapping[str, str],
        deadline: float,
    ) -> None:
        """New limits (cgroups), hostname (set inside by ``runsc exec`` with CAP_SYS_ADMIN, which
        the sandbox itself lacks) and env file (read by the agent at its next start)."""
        if record.init is None or not record.init.alive():
            raise SandboxStateError("the sandbox is not running", record.sandbox_id)
        limits = CgroupLimits(cpu=cpu, mem_mb=mem_mb, pids_max=self._pids_max)
        self.cgroups.set_limits(record.cgroups, limits)
        code = "import socket, sys; socket.sethostname(sys.argv[1])"
        python = self._agent_argv("")[: self._agent_argv("").index("-I")]
        wired = bool(record.net_address) and self.network is not None
        # A wired sentry's control socket is an abstract Unix socket, which belongs to the
        # sandbox's network namespace: from anywhere else runsc finds no running container.
        with netns.entered(run.netns) if wired else contextlib.nullcontext():
            self.runsc.call(
                run.runsc_root,
                "exec",
                "--cap=CAP_SYS_ADMIN",
                record.sandbox_id,
                *python,
                "-I",
                "-S",
                "-c",
                code,
                hostname,
                deadline=deadline,
                network=wired,
            )
        tmp = run.run / f".env.{os.getpid()}.{time.monotonic_ns()}"
        _write_private(tmp, json.dumps(dict(env), sort_keys=True).encode(), 0o600)
        os.rename(tmp, run.run / "env")
        record.hostname, record.cpu, record.mem_mb = hostname, cpu, mem_mb
        write_record(run, record)

    def observe(self, run: GvisorRun, record: SandboxRecord | None) -> SandboxInfo:
        if record is None:
            return SandboxInfo(SandboxState.GONE, run.socket, None)
        if record.phase is Phase.STOPPED:
            return SandboxInfo(SandboxState.STOPPED, run.socket, None, OWNER)
        if record.init is None or not record.init.alive():
            return SandboxInfo(SandboxState.GONE, run.socket, None, OWNER)
        frozen = self.cgroups.is_frozen(record.cgroups)
        state = SandboxState.PAUSED if frozen else SandboxState.RUNNING
        return SandboxInfo(state, run.socket, record.init.pid, OWNER)

    def inspect(self, run: GvisorRun) -> SandboxInfo:
        return self.observe(run, read_record(run))

    def recover(self) -> dict[str, SandboxInfo]:
        runs = [self.run_dir(sandbox_id) for sandbox_id in sandbox_ids(self.state_dir)]
        return {run.sandbox_id: self.observe(run, read_record(run)) for run in runs}

    def stats(self, record: SandboxRecord) -> SandboxStats:
        return self.cgroups.stats(record.cgroups)

    def set_policy(self, run: GvisorRun, record: SandboxRecord, policy: dict[str, object]) -> None:
        """Record the policy; a sandbox with a link gets it at once, a stopped one at start."""
        record.net_policy = policy
        write_record(run, record)
        if self.network is not None and os.path.ismount(run.netns):
            self.network.apply_policy(record)


def _write_identity(run: GvisorRun, hostname: str, nameserver: str | None) -> None:
    etc = run.upper / "etc"
    files = {
        "hostname": f"{hostname}\n",
        "hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n",
    }
    if nameserver is not None:  # the server's resolver, on the gateway
        files["resolv.conf"] = f"nameserver {nameserver}\noptions timeout:2\n"
    for name, text in files.items():
        _write_private(etc / name, text.encode(), 0o644)


def _write_env(run: GvisorRun, env: Mapping[str, str]) -> None:
    _write_private(run.run / "env", json.dumps(dict(env), sort_keys=True).encode(), 0o600)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """A new file (never through a symlink the sandbox may have left at that name)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchown(fd, OWNER, OWNER)
        os.write(fd, data)
    finally:
        os.close(fd)
