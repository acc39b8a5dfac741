"""A warm pool: sandboxes of the default image started ahead of time and handed out on create.

One pool per isolation whose driver can retarget a running sandbox (``Retargetable``), sized
by that isolation's setting.

Taking a sandbox that is already up and giving it the caller's hostname, limits and environment
costs a few ms less than booting one. ``VOIDRUN_WARM_POOL_SIZE`` sandboxes are kept ready
(0 = off). They have no database row until handed out, so after a crash the start-up reconcile
destroys them like any orphan, and the server destroys them on a clean shutdown.

The refill never competes with the host's real work: it waits while a caller's create is in
flight, while the host's available memory is under ``VOIDRUN_WARM_POOL_MIN_FREE_MEMORY_MB``,
and while the disk floor (``VOIDRUN_MIN_FREE_DISK_MB``) would not hold another sandbox disk.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import anyio

from .. import ids
from ..agentclient import AgentClient
from ..drivers.base import DriverError, NetworkPolicy, SandboxSpec
from ..drivers.driverset import DriverSet
from ..errors import DeadlineExceededError, VoidRunError
from .agents import AgentPool, AgentSocket
from .storage import DiskFloor

log = logging.getLogger(__name__)
POOL_HOSTNAME = "sandbox"
RETRY_DELAY = 5.0
ROOM_POLL = 0.5
MIB = 1 << 20


def available_memory_mb(meminfo: str = "/proc/meminfo") -> int:
    """The kernel's MemAvailable estimate (a read of procfs: memory-backed, never blocks)."""
    with open(meminfo, "rb") as f:
        for line in f:
            if line.startswith(b"MemAvailable:"):
                return int(line.split()[1]) // 1024
    return 0


def identity_files(hostname: str) -> dict[str, str]:
    """/etc/hostname and /etc/hosts for a sandbox called ``hostname``."""
    return {
        "/etc/hostname": f"{hostname}\n",
        "/etc/hosts": f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n",
    }


@dataclass(frozen=True)
class Warm:
    sandbox_id: str
    rootfs: Path
    agent_socket: AgentSocket


class WarmPool:
    def __init__(
        self,
        driver: DriverSet,
        agents: AgentPool,
        *,
        isolation: str,
        size: int,
        cpu: int,
        mem_mb: int,
        disk_mb: int,
        ready_timeout: float,
        min_free_memory_mb: int = 0,
        disk_floor: DiskFloor | None = None,
    ) -> None:
        self.driver = driver
        self.isolation = isolation
        self.agents = agents
        self.size = size
        self.cpu, self.mem_mb, self.disk_mb = cpu, mem_mb, disk_mb
        self.ready_timeout = ready_timeout
        self.min_free_memory_mb = min_free_memory_mb
        self.disk_floor = disk_floor
        self._ready: list[Warm] = []
        self._wanted = anyio.Event()
        self._refill: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._creating = 0  # callers' creates in flight: the refill waits for them
        self._quiet = anyio.Event()
        self._quiet.set()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """Mark a caller's create as in flight (the refill waits until none is)."""
        if self._creating == 0:
            self._quiet = anyio.Event()
        self._creating += 1
        try:
            yield
        finally:
            self._creating -= 1
            if self._creating == 0:
                self._quiet.set()

    def give_back(self, warm: Warm) -> None:
        """A taken sandbox that was not handed out after all (the create's insert failed)."""
        self._ready.insert(0, warm)

    @property
    def ready_count(self) -> int:
        return len(self._ready)

    def has(self, rootfs: Path, disk_mb: int) -> bool:
        """Whether :meth:`take` would find one now."""
        return disk_mb == self.disk_mb and any(w.rootfs == rootfs for w in self._ready)

    def take(self, rootfs: Path, disk_mb: int) -> Warm | None:
        """A ready sandbox of that image and disk size, if there is one (and ask for another)."""
        if disk_mb != self.disk_mb:
            return None
        for index, warm in enumerate(self._ready):
            if warm.rootfs == rootfs:
                del self._ready[index]
                self._wanted.set()
                return warm
        return None

    async def run_forever(self, default_rootfs: Callable[[], Awaitable[Path | None]]) -> None:
        """Keep ``size`` sandboxes of the default image ready; owned by the app's task group.
        :meth:`drain` ends it (and waits until a refill in flight is undone)."""
        try:
            with anyio.CancelScope() as self._refill:
                await self._refill_forever(default_rootfs)
        finally:
            self._stopped.set()

    async def _refill_forever(self, default_rootfs: Callable[[], Awaitable[Path | None]]) -> None:
        while True:
            await self._quiet.wait()  # not even its image lookup beside a caller's create
            rootfs = await default_rootfs()
            if rootfs is None:  # no image built yet: look again later
                await anyio.sleep(RETRY_DELAY)
                continue
            stale = [w for w in self._ready if w.rootfs != rootfs]  # the image was rebuilt
            self._ready = [w for w in self._ready if w.rootfs == rootfs]
            for warm in stale:
                await self._destroy(warm.sandbox_id)
            if len(self._ready) >= self.size:
                self._wanted = anyio.Event()
                await self._wanted.wait()
                continue
            try:
                await self._wait_for_room()
                self._ready.append(await self._start(rootfs))
            except Exception as exc:  # whatever it was, try again later; never end the loop
                log.warning("warm pool: could not start a sandbox: %r", exc)
                await anyio.sleep(RETRY_DELAY)

    async def _wait_for_room(self) -> None:
        """Until no caller's create is in flight and the host has memory and disk to spare."""
        while True:
            await self._quiet.wait()
            if available_memory_mb() >= self.min_free_memory_mb:
                break
            await anyio.sleep(ROOM_POLL)
        if self.disk_floor is not None:
            # leaving room for one caller's disk too; InsufficientStorageError: retry later
            await self.disk_floor.reserve_for_create(self.disk_mb, headroom_mb=self.disk_mb)

    async def _start(self, rootfs: Path) -> Warm:
        spec = SandboxSpec(
            sandbox_id=ids.new_id(),
            hostname=POOL_HOSTNAME,
            rootfs=rootfs,
            cpu=self.cpu,
            mem_mb=self.mem_mb,
            disk_mb=self.disk_mb,
            isolation=self.isolation,
        )
        info = None
        try:
            with anyio.fail_after(self.ready_timeout + 5):
                info = await self.driver.create(spec)
                await self.agents.run(spec.sandbox_id, AgentSocket.of(info), self._warm_up)
        except BaseException as exc:  # cancelled too (shutdown): a created sandbox goes again
            if info is not None or isinstance(exc, (VoidRunError, TimeoutError)):
                with anyio.CancelScope(shield=True):
                    await self._destroy(spec.sandbox_id)
            raise
        return Warm(spec.sandbox_id, rootfs, AgentSocket.of(info))

    @staticmethod
    async def _warm_up(agent: AgentClient) -> None:
        """What a hand-out and a caller's first command use, loaded now: the agent imports each
        op family on its first op (its file writes, its process spawning)."""
        async with anyio.create_task_group() as ops:
            for path, text in identity_files(POOL_HOSTNAME).items():
                ops.start_soon(partial(agent.write_file, durable=False), path, text.encode())
        await agent.exec("true", timeout=10)

    async def hand_out_for(
        self, warm: Warm, spec: SandboxSpec, default: NetworkPolicy | None
    ) -> None:
        """:meth:`hand_out` for a create's ``spec``. The warm sandbox was started under the
        server's ``default`` egress policy: only another one is applied."""
        await self.hand_out(
            warm,
            spec.sandbox_id,
            hostname=spec.hostname,
            cpu=spec.cpu,
            mem_mb=spec.mem_mb,
            env=dict(spec.env),
            network=spec.network if spec.network != default else None,
        )

    async def hand_out(
        self,
        warm: Warm,
        sandbox_id: str,
        *,
        hostname: str,
        cpu: int,
        mem_mb: int,
        env: dict[str, str],
        network: NetworkPolicy | None = None,
    ) -> None:
        """Make a taken sandbox the caller's: hostname, limits, environment, egress policy
        (it was started under the server's default). The host side (driver) and the inside
        (agent) are independent, so they run at the same time."""
        driver = self.driver

        async def outside() -> None:
            await driver.retarget(sandbox_id, hostname=hostname, cpu=cpu, mem_mb=mem_mb, env=env)
            if network is not None and driver.networked(self.isolation) is not None:
                await driver.set_network_policy(sandbox_id, network)

        async def personalise(agent: AgentClient) -> None:
            if env:
                await agent.set_env(env)
            async with anyio.create_task_group() as writes:  # file ops, never a shell string
                for path, text in identity_files(hostname).items():
                    writes.start_soon(partial(agent.write_file, durable=False), path, text.encode())

        async def inside() -> None:
            await self.agents.run(sandbox_id, warm.agent_socket, personalise)

        failures: list[VoidRunError] = []

        async def collect(step: Callable[[], Awaitable[None]]) -> None:
            try:
                await step()
            except VoidRunError as exc:
                failures.append(exc)

        try:
            with anyio.fail_after(self.ready_timeout):
                async with anyio.create_task_group() as steps:
                    steps.start_soon(collect, outside)
                    steps.start_soon(collect, inside)
        except TimeoutError as exc:
            raise DeadlineExceededError("handing out a warm sandbox timed out") from exc
        if failures:
            raise failures[0]

    async def drain(self) -> None:
        """Stop refilling (a sandbox being started is destroyed by its own cleanup), then
        destroy every sandbox still waiting in the pool (at shutdown)."""
        with anyio.CancelScope(shield=True):
            if self._refill is not None:
                self._refill.cancel()
                with anyio.move_on_after(self.ready_timeout + 10):
                    await self._stopped.wait()
            ready, self._ready = self._ready, []
            for warm in ready:
                await self._destroy(warm.sandbox_id)

    async def _destroy(self, sandbox_id: str) -> None:
        self.agents.forget(sandbox_id)
        try:
            await self.driver.destroy(sandbox_id)
        except DriverError as exc:
            log.error("warm pool: could not destroy %s: %s", sandbox_id, exc)
