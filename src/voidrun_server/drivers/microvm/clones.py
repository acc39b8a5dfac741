"""Create by cloning a snapshot template (``template.py`` explains what a template is).

1. **Template** (once per shape, under a per-shape lock): a cold boot with RAM in a file,
   the agent's handshake and one ``true`` (so its exec machinery is imported), the host
   connection closed, QMP ``stop`` + ``migrate`` of the device state, QEMU quit.
2. **Clone**: the sandbox's own copy of the template's disk, QEMU with ``-incoming`` from the
   template's state and the RAM mapped privately from the sealed memfd; QMP ``cont``.
3. **Identity**, before the create returns: one agent op (``vm.identity``, ``agent/guest.py``,
   run by the agent itself: spawning a process costs seconds under TCG) gives the clone its
   hostname, the host's wall clock (the guest's clock stopped when the template was saved),
   fresh randomness (64 host bytes credited to the guest's input pool and ``RNDRESEEDCRNG``:
   the clones' kernels start from the same CRNG state and would otherwise produce the same
   "random" bytes until their next scheduled reseed) and the sandbox's environment (exec
   defaults and ``/run/voidrun/env.json``). The kernel's boot_id is generated on its first
   read, after the reseed (nothing in the template reads it).

Any failure to build a template is logged and the create falls back to a cold boot; a
template whose clone fails to restore is discarded and rebuilt by a later create.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import anyio
import anyio.to_thread

from voidrun_server.agentclient import AgentClient, AgentError
from voidrun_server.drivers.base import DriverError, SandboxSpec
from voidrun_server.drivers.microvm.qemu import GUEST_ARGS, qemu_version
from voidrun_server.drivers.microvm.qmp import QmpClient
from voidrun_server.drivers.microvm.state import RunDir, VmRecord
from voidrun_server.drivers.microvm.template import (
    Template,
    TemplateStore,
    save_state,
    template_key,
)
from voidrun_server.drivers.microvm.vm import VmHost
from voidrun_server.drivers.namespace.disk import DiskTemplates, provision_image
from voidrun_server.drivers.namespace.procs import ProcessRef

__all__ = ["Cloner", "identify", "identify_at"]

TEMPLATE_HOSTNAME = "sandbox"
SETTLE = 0.5  # after the template's host connection closes: the agent sees the hang-up

ENV_FILE = "/run/voidrun/env.json"  # the agent's --env-file (guest_init.py)

WaitReady = Callable[[RunDir, VmRecord, ProcessRef], Awaitable[None]]


class Cloner:
    def __init__(self, host: VmHost, wait_ready: WaitReady, op_timeout: float) -> None:
        self.host = host
        self.store = TemplateStore(host.cache_dir / "templates")
        self.wait_ready = wait_ready
        self.op_timeout = op_timeout
        self.qemu = qemu_version(build=True)  # another build may not load this one's state
        self._locks: dict[str, anyio.Lock] = {}

    def key(self, spec: SandboxSpec, image: Path) -> str:
        return template_key(
            {
                "image": image,
                "agent": self.host.agent_disk,
                "kernel": self.host.assets.kernel,
                "initrd": self.host.assets.initrd,
                "accelerator": self.host.accelerator,
                "agent_argv": list(self.host.agent_argv),
                "kernel_args": list(GUEST_ARGS),
                "qemu": self.qemu,
                "cpu": spec.cpu,
                "mem_mb": spec.mem_mb,
                "disk_mb": spec.disk_mb,
            }
        )

    async def template(self, spec: SandboxSpec, image: Path, deadline: float) -> Template:
        """The template of this shape, built now if there is none."""
        key = await anyio.to_thread.run_sync(self.key, spec, image)
        async with self._locks.setdefault(key, anyio.Lock()):
            found = await anyio.to_thread.run_sync(self.store.find, key)
            if found is not None:
                return found
            lock = self.store.build_lock(key)
            await anyio.to_thread.run_sync(lock.__enter__)
            try:
                found = await anyio.to_thread.run_sync(self.store.find, key)
                return found or await self._build(key, spec, image, deadline)
            finally:
                await anyio.to_thread.run_sync(lock.__exit__, None, None, None)

    async def _build(self, key: str, spec: SandboxSpec, image: Path, deadline: float) -> Template:
        host = self.host
        build = await anyio.to_thread.run_sync(self.store.build_dir, key)
        run = RunDir(build)
        owner = f"microvm/template-{key}"
        record: VmRecord | None = None
        try:
            uid = await anyio.to_thread.run_sync(host.uids.allocate, owner)
            record = VmRecord(
                sandbox_id=f"template-{key}",
                hostname=TEMPLATE_HOSTNAME,
                cpu=spec.cpu,
                mem_mb=spec.mem_mb,
                disk_mb=spec.disk_mb,
                uid=uid,
                image_disk=str(image),
            )
            await anyio.to_thread.run_sync(_prepare_build, host, run, record)
            proc = await anyio.to_thread.run_sync(
                lambda: host.boot(run, record, ram_file=build / "ram.img", ram_shared=True)
            )
            await self.wait_ready(run, record, proc)
            async with AgentClient(run.agent_socket, owner_uid=uid) as agent:
                # imports what a clone's identity step and first command use; flushes
                await identify(agent, TEMPLATE_HOSTNAME, {})
                await agent.exec("sync", timeout=30)
            await anyio.sleep(SETTLE)
            await anyio.to_thread.run_sync(
                save_state, run.qmp_socket, uid, build / "state.bin", deadline
            )
            await anyio.to_thread.run_sync(host.halt, run, record, deadline)
            return await anyio.to_thread.run_sync(self.store.publish, key, build)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_drop_build, host, run, record, owner)

    async def clone(
        self, spec: SandboxSpec, image: Path, template: Template, owned: list[bool]
    ) -> tuple[RunDir, VmRecord, ProcessRef]:
        """A running clone with the sandbox's identity (the caller destroys it on failure)."""
        host = self.host

        def launch() -> tuple[RunDir, VmRecord, ProcessRef, int]:
            memfd, state, disk = self.store.open(template)
            try:
                run, record = host.prepare(
                    spec, image, owned, disk_source=Path(f"/proc/self/fd/{disk}")
                )
            except BaseException:
                os.close(state)
                raise
            finally:
                os.close(disk)
            try:
                proc = host.boot(
                    run,
                    record,
                    ram_file=Path(f"/proc/self/fd/{memfd}"),
                    incoming_fd=state,
                    pass_fds=(memfd, state),
                )
            finally:
                os.close(state)
            return run, record, proc, state  # the same fd number in QEMU

        run, record, proc, state = await anyio.to_thread.run_sync(launch)
        try:
            await self._resume(run, record, incoming_fd=state)
            await self.wait_ready(run, record, proc)
        except DriverError as exc:
            await anyio.to_thread.run_sync(self.store.discard, template)
            tail = await anyio.to_thread.run_sync(run.log_tail)
            raise DriverError(exc.message, f"{exc.details}\n{tail}") from exc
        await self._personalise(run, record, spec)
        return run, record, proc

    async def _resume(self, run: RunDir, record: VmRecord, *, incoming_fd: int) -> None:
        """Load the template's state from QEMU's inherited fd ``incoming_fd``, wait for it
        (the VM is then paused, as the template was), then ``cont``."""
        within = self.op_timeout
        async with await QmpClient.connect(
            run.qmp_socket, owner_uid=record.uid, within=within
        ) as qmp:
            capabilities = [{"capability": "x-ignore-shared", "state": True}]
            await qmp.execute("migrate-set-capabilities", within=within, capabilities=capabilities)
            await qmp.execute("migrate-incoming", within=within, uri=f"fd:{incoming_fd}")
            give_up = time.monotonic() + within
            while True:
                status = (await qmp.execute("query-status", within=within)).get("status")
                if status == "paused":
                    break
                if status != "inmigrate" or time.monotonic() > give_up:
                    raise DriverError("the clone did not restore", f"QEMU status {status!r}")
                await anyio.sleep(0.005)
            await qmp.execute("cont", within=within)

    async def _personalise(self, run: RunDir, record: VmRecord, spec: SandboxSpec) -> None:
        await identify_at(run.agent_socket, record.uid, spec.hostname, spec.env, self.op_timeout)


async def identify(agent: AgentClient, hostname: str, env: Mapping[str, str]) -> None:
    """``vm.identity`` with the host's clock and 64 fresh random bytes."""
    seed = secrets.token_bytes(64)
    await agent.vm_identity(
        hostname=hostname, clock=time.time(), seed=seed, env=env, env_file=ENV_FILE
    )


async def identify_at(
    socket: Path, uid: int, hostname: str, env: Mapping[str, str], connect_within: float
) -> None:
    """:func:`identify` over a new connection to the agent port at ``socket`` (owned by
    ``uid``); DriverError if it cannot connect, the guest refuses or the agent goes away."""
    try:
        async with AgentClient(socket, connect_timeout=connect_within, owner_uid=uid) as agent:
            await identify(agent, hostname, env)
    except AgentError as exc:
        raise DriverError("cannot give the VM its identity", str(exc)) from exc


def _prepare_build(host: VmHost, run: RunDir, record: VmRecord) -> None:
    template = DiskTemplates(host.state_dir / ".templates").get(record.disk_mb)
    provision_image(template, run.disk)
    os.chown(run.disk, record.uid, record.uid)
    fd = os.open(run.root / "ram.img", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, record.mem_mb << 20)
        os.fchown(fd, record.uid, record.uid)
    finally:
        os.close(fd)
    run.sock_dir.mkdir(mode=0o700)
    os.chown(run.sock_dir, record.uid, record.uid)


def _drop_build(host: VmHost, run: RunDir, record: VmRecord | None, owner: str) -> None:
    """Whatever a build left (all of it after a failure; the empty dir after success)."""
    if record is not None and record.process is not None:
        host.halt(run, record, time.monotonic() + 10)
    if record is not None:
        paths = host.cgroups.paths_for(record.sandbox_id)
        if host.cgroups.exists(paths):
            host.cgroups.remove(paths, time.monotonic() + 10)
    host.uids.release(owner)
    shutil.rmtree(run.root, ignore_errors=True)
