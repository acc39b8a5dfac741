"""The blocking, on-host half of the namespace driver: what runs in worker threads.

Each public method is one step of a sandbox's life, done with plain syscalls and files: it may
block (cgroupfs writes, mount, spawning bwrap, waiting for processes to die) and it takes an
absolute ``deadline`` because a worker thread cannot be cancelled. ``NamespaceDriver`` (the
async half, ``driver.py``) adds locking, deadlines, readiness and shielded cleanup on top.

State lives on disk only (``state.py``): a restarted server builds a new ``SandboxHost`` and
finds everything again. ``stop`` leaves only files (no process, mount, loop device or cgroup);
``start`` re-creates them over the same disk image.

Each sandbox has its own host uid range (``uidrange.py``), taken at create and kept in its
record until destroy; everything of the sandbox on the host (its processes, its writable layer,
the idmapped view of the image, the agent socket) belongs to that range. A record from before
per-sandbox ranges (``uid_base`` 100000, the range the images are shifted to) keeps working:
such a sandbox uses the image directly, as it always did.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from voidrun_server.drivers.base import (
    DriverError,
    DriverUnavailableError,
    SandboxInfo,
    SandboxSpec,
    SandboxState,
    SandboxStateError,
    SandboxStats,
)
from voidrun_server.drivers.namespace import disk, idmount
from voidrun_server.drivers.namespace.bwrap import CA_BUNDLE, SANDBOX_PATH, BwrapFds, bwrap_argv
from voidrun_server.drivers.namespace.cgroups import CgroupLimits, Cgroups
from voidrun_server.drivers.namespace.launch import disable_core_dumps, launch
from voidrun_server.drivers.namespace.mountns import LaunchNamespace
from voidrun_server.drivers.namespace.netns import entered
from voidrun_server.drivers.namespace.network import Attaching, HostNetwork
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.state import (
    SANDBOX_ENV_FILE,
    SANDBOX_RUN_DIR,
    SANDBOX_SOCKET,
    Phase,
    RunDir,
    SandboxRecord,
    read_record,
    sandbox_ids,
    write_record,
)
from voidrun_server.drivers.namespace.uidrange import RANGE_SIZE, UidRanges
from voidrun_server.drivers.namespace.userns import IdMap, privilege_drop_prefix
from voidrun_server.drivers.namespace.zygote import Zygote

__all__ = ["SandboxHost", "check_traversable", "teardown"]

CLEANUP_TIMEOUT = 30.0


def check_traversable(path: Path, uid: int, what: str) -> None:
    """bwrap runs as ``uid``: every ancestor of ``path`` must let it through."""
    for p in [path, *path.parents]:
        st = os.stat(p)
        if st.st_mode & stat.S_IXOTH or (st.st_uid == uid and st.st_mode & stat.S_IXUSR):
            continue
        raise DriverUnavailableError(
            f"{what} {path} is not reachable by the sandbox uid {uid}: {p} lacks o+x",
            hint=f"chmod o+x {p} (or choose a directory outside private trees like /root)",
        )


def _lock_run_dir(run: RunDir, gid: int) -> None:
    """``root:gid`` 0710: the sandbox's bwrap (uid = gid = its base) may pass through to its
    disk, socket and image view; no other host user may even look inside."""
    os.chown(run.root, 0, gid)
    os.chmod(run.root, 0o710)


def reap(pid: int) -> None:
    """Collect ``pid`` if it is a dead child of ours (any driver instance in this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def teardown(
    run: RunDir, *, cgroups: Cgroups, uids: UidRanges, network: HostNetwork | None
) -> None:
    """Remove a sandbox's processes, cgroups, network, mounts, loop devices, run directory and
    uid range; works from any state, a torn create (no record) included. ``network`` None:
    the caller has unwired it (``purge.py``, which needs no running network to do so)."""
    deadline = time.monotonic() + CLEANUP_TIMEOUT
    record = read_record(run)
    paths = record.cgroups if record else cgroups.paths_for(run.sandbox_id)
    if record is not None:
        kill(record, cgroups, deadline)
    else:
        cgroups.remove(paths, deadline)
    if not run.root.exists():
        return
    if network is not None:
        network.detach(run, run.sandbox_id, record)
        network.release(record.net_address if record else None)
    lowers = run.lower_mounts()
    for lower in lowers:
        idmount.unmount_detach(lower)
    disk.release(run.disk_image, run.disk_mount, deadline)
    for mount_point in (*lowers, run.disk_mount, run.netns):
        if idmount.is_mount_point(mount_point):
            raise DriverError(f"{mount_point} is still mounted; not deleting it")
    shutil.rmtree(run.root)  # symlink-safe (fd-based) on Linux
    uids.release(run.sandbox_id, record.uid_base if record else None)


def kill(record: SandboxRecord, cgroups: Cgroups, deadline: float) -> None:
    """Kill every process of the sandbox, reap our children, remove its cgroups."""
    for ref in (record.init, record.monitor):
        if ref is not None:
            ref.kill()
    cgroups.remove(record.cgroups, deadline)
    for ref in (record.monitor, record.init):
        if ref is not None:
            reap(ref.pid)
            while ref.alive() and time.monotonic() < deadline:
                time.sleep(0.001)  # outside the cgroup only if attach never happened
                reap(ref.pid)


CA_ENV = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
    "CURL_CA_BUNDLE",
)


class SandboxHost:
    """Sandboxes under ``state_dir`` as bwrap process trees, cgroups and loop-mounted disks."""

    def __init__(
        self,
        state_dir: Path,
        *,
        uids: UidRanges,
        bwrap: Path,
        bpf: bytes,
        cgroups: Cgroups,
        setpriv: str | None,
        agent_argv: Callable[[str], list[str]],
        agent_dir: Path,
        runtime_dir: Path | None,
        env_file_option: str | None,
        pids_max: int,
        network: HostNetwork | None = None,
        ca_bundle: Path | None = None,
        zygote: Zygote | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.uids = uids
        self.cgroups = cgroups
        self._bwrap = bwrap
        self._bpf = bpf
        self._setpriv = setpriv
        disable_core_dumps()
        self._agent_argv = agent_argv
        self._agent_dir = agent_dir
        self._runtime_dir = runtime_dir
        self._env_file_option = env_file_option
        self._pids_max = pids_max
        self._templates = disk.DiskTemplates(state_dir / ".templates")
        self.network = network
        self._ca_bundle = ca_bundle
        self.zygote = zygote
        # bwrap is spawned from a small mount namespace (mountns.py): sandbox mounts of this
        # data directory (and every other pin and loop mount) are left out of it
        data_root = state_dir.resolve().parent
        self.launch_ns = LaunchNamespace((data_root if data_root != Path("/") else state_dir,))
        self.launch_ns.prepare()

    def run_dir(self, sandbox_id: str) -> RunDir:
        return RunDir.of(self.state_dir, sandbox_id)

    def create(
        self, run: RunDir, spec: SandboxSpec, owned: list[bool], deadline: float
    ) -> tuple[ProcessRef, int]:
        """Uid range, disk, identity files, image view, cgroups, bwrap; returns the sandbox's
        pid 1 (not yet ready) and its base uid (the agent socket's owner).

        Appends to ``owned`` once the run directory exists, so the caller knows whether a
        failure left something for :meth:`destroy` (a duplicate id must not destroy the
        original).
        """
        for layer in (spec.rootfs, *spec.layers):
            if not layer.is_dir():
                raise DriverError("image root filesystem not found", str(layer))
        image = os.stat(spec.rootfs)
        try:
            os.mkdir(run.root, 0o700)
        except FileExistsError as exc:
            raise SandboxStateError(f"sandbox {spec.sandbox_id} already exists") from exc
        owned.append(True)
        # No record until the sandbox runs: a run dir without one reads as GONE, and destroy
        # cleans it up from the conventional paths (cgroups, mounts, uid range) alone.
        base = self.uids.allocate(
            spec.sandbox_id, avoid=[(image.st_uid, RANGE_SIZE), (image.st_gid, RANGE_SIZE)]
        )
        _lock_run_dir(run, base)
        address = self.network.allocate() if self.network is not None else None
        record = SandboxRecord(
            sandbox_id=spec.sandbox_id,
            hostname=spec.hostname,
            rootfs=str(spec.rootfs.resolve()),
            cpu=spec.cpu,
            mem_mb=spec.mem_mb,
            disk_mb=spec.disk_mb,
            uid_base=base,
            phase=Phase.CREATING,
            net_address=str(address) if address else None,
            net_policy=spec.network.to_wire() if spec.network else None,
            layers=[str(layer.resolve()) for layer in spec.layers],
        )
        attaching = None
        try:
            if self.network is not None:  # namespace, link and rules while the disk is made
                attaching = self.network.begin_attach(run, record)
            try:
                disk.provision_image(self._templates.get(spec.disk_mb), run.disk_image)
                run.disk_mount.mkdir(mode=0o700)
                disk.mount_image(run.disk_image, run.disk_mount)
                disk.claim_layer(run.disk_mount, base, base)
                self._write_identity(run, spec.hostname, base)
                self._write_env(run, spec.env, base)
            except BaseException:
                if attaching is not None:
                    attaching.undo()
                raise
            return self._launch(run, record, deadline, attaching), base
        except BaseException:
            if self.network is not None:
                self.network.release(record.net_address)
            raise

    def start(self, run: RunDir, record: SandboxRecord, deadline: float) -> ProcessRef:
        """New processes over the kept disk (mounting it again after a stop or a reboot)."""
        self._kill(record, deadline)  # leftovers of a sandbox that died on its own
        if not os.path.ismount(run.disk_mount):
            # A filesystem still alive in a dying mount namespace must be gone before the
            # image is mounted again: two ext4 instances on one image would corrupt it.
            disk.detach_loop_devices(run.disk_image, deadline)
            run.disk_mount.mkdir(mode=0o700, exist_ok=True)
            disk.mount_image(run.disk_image, run.disk_mount)
        _lock_run_dir(run, record.uid_base)  # also tightens sandboxes from older versions
        disk.claim_layer(run.disk_mount, record.uid_base, record.uid_base, fresh=False)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(run.socket)  # unlink never follows a symlink
        return self._launch(run, record, deadline)

    def _launch(
        self,
        run: RunDir,
        record: SandboxRecord,
        deadline: float,
        attaching: Attaching | None = None,
    ) -> ProcessRef:
        """Fresh cgroups, then bwrap (and the agent); records the new processes as RUNNING.
        ``attaching``: its network, begun by the caller (else begun here)."""
        networked = self.network is not None and record.net_address is not None
        if networked and attaching is None:
            assert self.network is not None
            attaching = self.network.begin_attach(run, record)
        try:
            return self._launch_attaching(run, record, deadline, attaching)
        except BaseException:
            if attaching is not None:
                attaching.undo()
            raise

    def _launch_attaching(
        self, run: RunDir, record: SandboxRecord, deadline: float, attaching: Attaching | None
    ) -> ProcessRef:
        lowers = self._mount_lowers(run, record, deadline)
        limits = CgroupLimits(cpu=record.cpu, mem_mb=record.mem_mb, pids_max=self._pids_max)
        record.cgroups = self.cgroups.create(record.sandbox_id, limits)
        networked = attaching is not None
        args = ["--socket", SANDBOX_SOCKET]
        if self._env_file_option:
            args += [self._env_file_option, SANDBOX_ENV_FILE]
        zygote = self.zygote
        payload = (
            list(zygote.config.holder) if zygote else [*self._agent_argv(SANDBOX_SOCKET), *args[2:]]
        )
        join = None
        if zygote is not None:
            request = {
                "cgroups": self.cgroups.join_files(record.cgroups),
                "environ": {"PATH": SANDBOX_PATH, "HOME": "/root"},
                "argv": args,
                "paths": list(zygote.config.sys_path),
            }

            def join(init: ProcessRef, life: int, log: int, ready: int, deadline: float) -> int:
                assert zygote is not None
                ask = {**request, "init": init.pid, "init_start": init.start_time}
                return zygote.fork_agent(ask, (life, log, ready), deadline)

        def build(fds: BwrapFds) -> list[str]:
            return bwrap_argv(
                self._bwrap,
                lowers=lowers,
                upper=run.upper,
                work=run.work,
                run_dir=run.run,
                sandbox_run_dir=SANDBOX_RUN_DIR,
                agent_dir=self._agent_dir,
                runtime_dir=self._runtime_dir,
                hostname=record.hostname,
                payload=payload,
                fds=fds,
                share_net=networked,
                ca_bundle=self._ca_bundle,
            )

        base = record.uid_base
        if attaching is not None:  # bwrap is born in the namespace; link and rules may follow
            attaching.namespace()
        try:
            launched = launch(
                build,
                bpf=self._bpf,
                idmap=IdMap(base),
                drop_prefix=privilege_drop_prefix(self._setpriv, base, base),
                cgroups=self.cgroups,
                cgroup_paths=record.cgroups,
                log_file=run.log_file,
                deadline=deadline,
                netns=run.netns if networked else None,
                join=join,
                mounts=self.launch_ns.spawning([run.disk_mount, *run.lower_mounts()]),
            )
        except DriverError as exc:
            tail = run.log_tail()
            raise type(exc)(exc.message, tail or exc.details) from exc
        record.monitor, record.init = launched.monitor, launched.init
        if attaching is not None:
            try:
                attaching.wait()
            except BaseException:
                self._kill(record, deadline)
                record.monitor = record.init = None
                raise
        record.phase = Phase.RUNNING
        write_record(run, record)
        return launched.init

    def _mount_lowers(self, run: RunDir, record: SandboxRecord, deadline: float) -> list[Path]:
        """The overlay's lower layers, top first: the image (and the layers below it, for a
        snapshot image) seen through the sandbox's uid range.

        A layer whose range *is* the sandbox's (created before per-sandbox ranges) is used
        directly. Otherwise an idmapped read-only mount at ``<run>/lower`` (``lower.N`` for
        the N-th layer below), made unless it is still there (a server restart, a start after
        the sandbox died).
        """
        lowers = []
        for index, layer in enumerate([record.rootfs, *record.layers]):
            rootfs = Path(layer)
            image = os.stat(rootfs)
            if (image.st_uid, image.st_gid) == (record.uid_base, record.uid_base):
                check_traversable(rootfs, record.uid_base, "rootfs")
                lowers.append(rootfs)
                continue
            target = run.lower_at(index)
            if not idmount.is_mount_point(target):
                target.mkdir(mode=0o700, exist_ok=True)
                idmount.mount_idmapped(
                    rootfs,
                    target,
                    idmount.IdRange(image.st_uid, record.uid_base),
                    idmount.IdRange(image.st_gid, record.uid_base),
                    deadline,
                )
            lowers.append(target)
        return lowers

    def _write_identity(self, run: RunDir, hostname: str, owner: int) -> None:
        """Per-sandbox /etc/hostname and /etc/hosts, written into the fresh upper layer.

        ``upper/etc`` comes with the disk template; a plain directory merges with the image's.
        """
        etc = run.upper / "etc"
        files = {
            "hostname": f"{hostname}\n",
            "hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
            "::1\tlocalhost ip6-localhost ip6-loopback\n",
        }
        if self.network is not None:  # the server's resolver, on the gateway
            files["resolv.conf"] = f"nameserver {self.network.gateway}\noptions timeout:2\n"
        for name, text in files.items():
            self._write_private(etc / name, text.encode(), 0o644, owner)

    def _write_env(self, run: RunDir, env: Mapping[str, str], owner: int) -> None:
        """A new file, then rename: replaces whatever the sandbox may have put at that name
        (a symlink included) without ever writing through it."""
        trust = {name: CA_BUNDLE for name in CA_ENV} if self._ca_bundle else {}
        data = json.dumps({**trust, **env}, sort_keys=True).encode()
        tmp = run.run / f".env.{os.getpid()}.{time.monotonic_ns()}"
        self._write_private(tmp, data, 0o600, owner)
        os.rename(tmp, run.run / "env")

    def _write_private(self, path: Path, data: bytes, mode: int, owner: int) -> None:
        """A new file owned by the sandbox's root (fresh directories only: O_EXCL|O_NOFOLLOW)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, mode)
        try:
            os.fchown(fd, owner, owner)
            os.write(fd, data)
        finally:
            os.close(fd)

    def _kill(self, record: SandboxRecord, deadline: float) -> None:
        kill(record, self.cgroups, deadline)

    def stop(self, run: RunDir, record: SandboxRecord) -> None:
        """Kill everything and release kernel objects; only the run directory stays."""
        deadline = time.monotonic() + CLEANUP_TIMEOUT
        self._kill(record, deadline)
        if self.network is not None and record.net_address:
            self.network.detach(run, record.sandbox_id, record)
        for lower in run.lower_mounts():
            idmount.unmount_detach(lower)
        disk.release(run.disk_image, run.disk_mount, deadline)
        record.monitor = record.init = None
        record.phase = Phase.STOPPED
        write_record(run, record)

    def destroy(self, run: RunDir) -> None:
        """Remove everything; works from any state, including a torn create (no record)."""
        teardown(run, cgroups=self.cgroups, uids=self.uids, network=self.network)

    def retarget(
        self,
        run: RunDir,
        record: SandboxRecord,
        hostname: str,
        cpu: int,
        mem_mb: int,
        env: Mapping[str, str],
    ) -> None:
        """New limits and hostname for a running sandbox (a warm-pool sandbox being handed
        out). The hostname is set from the host inside the sandbox's UTS namespace: the
        sandbox itself lacks CAP_SYS_ADMIN. The record and env file are updated so a restart
        keeps all of it; the running agent's environment is the caller's business."""
        if record.init is None or not record.init.alive():
            raise SandboxStateError("the sandbox is not running", record.sandbox_id)
        limits = CgroupLimits(cpu=cpu, mem_mb=mem_mb, pids_max=self._pids_max)
        self.cgroups.set_limits(record.cgroups, limits)
        try:  # this worker thread steps into the UTS namespace: no nsenter exec (~8 ms)
            with entered(Path(f"/proc/{record.init.pid}/ns/uts"), "uts"):
                socket.sethostname(hostname)
        except OSError as exc:
            raise DriverError("cannot set the sandbox hostname", str(exc)) from exc
        self._write_env(run, env, record.uid_base)  # read again by the agent at its next start
        record.hostname, record.cpu, record.mem_mb = hostname, cpu, mem_mb
        write_record(run, record)

    def set_frozen(self, run: RunDir, record: SandboxRecord, frozen: bool, deadline: float) -> None:
        """Pause (freeze) or resume (thaw); a no-op when already there."""
        info = self.observe(run, record)
        wanted = SandboxState.PAUSED if frozen else SandboxState.RUNNING
        if info.state is wanted:
            return
        if info.state not in (SandboxState.RUNNING, SandboxState.PAUSED):
            raise SandboxStateError(f"sandbox is {info.state.value}", "start it first")
        if frozen:
            self.cgroups.freeze(record.cgroups, deadline)
        else:
            self.cgroups.thaw(record.cgroups)
        record.phase = Phase.PAUSED if frozen else Phase.RUNNING
        write_record(run, record)

    def observe(self, run: RunDir, record: SandboxRecord | None) -> SandboxInfo:
        """What the kernel says about the sandbox, whatever the record claims."""
        if record is None:
            return SandboxInfo(SandboxState.GONE, run.socket, None)
        owner = record.uid_base
        if record.monitor is not None:
            reap(record.monitor.pid)
        if record.phase is Phase.STOPPED:
            return SandboxInfo(SandboxState.STOPPED, run.socket, None, owner)
        if record.init is None or not record.init.alive():
            return SandboxInfo(SandboxState.GONE, run.socket, None, owner)
        frozen = self.cgroups.is_frozen(record.cgroups)
        state = SandboxState.PAUSED if frozen else SandboxState.RUNNING
        return SandboxInfo(state, run.socket, record.init.pid, owner)

    def inspect(self, run: RunDir) -> SandboxInfo:
        return self.observe(run, read_record(run))

    def recover(self) -> dict[str, SandboxInfo]:
        """Every sandbox directory under ``state_dir``, as the kernel sees it now."""
        runs = [self.run_dir(sandbox_id) for sandbox_id in sandbox_ids(self.state_dir)]
        return {run.sandbox_id: self.observe(run, read_record(run)) for run in runs}

    def stats(self, record: SandboxRecord) -> SandboxStats:
        return self.cgroups.stats(record.cgroups)

    def set_policy(self, run: RunDir, record: SandboxRecord, policy: dict[str, object]) -> None:
        """Record the policy; a sandbox with a link gets it at once, a stopped one at start."""
        record.net_policy = policy
        write_record(run, record)
        if self.network is not None and os.path.ismount(run.netns):
            self.network.apply_policy(record)
