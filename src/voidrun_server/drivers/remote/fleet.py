"""``Fleet``: the driver of an API replica (``VOIDRUN_ROLE=api``). Every call goes to the
:class:`RemoteDriver` of the node that holds the sandbox.

The fleet never reads the database itself (drivers do not): the services layer hands it two
lookups, sandbox → node id (``sandboxes.node_id``) and node id → address and state (the nodes
table). Placements are told to it as they are made (:meth:`place`). Node addresses are cached
for :data:`ADDRESS_TTL` seconds and dropped when a node cannot be reached. A sandbox on a node
that is not ``ready``/``draining`` answers 503 with the node's state as the reason.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import httpx

from ...errors import VoidRunError
from ..base import (
    DriverUnavailableError,
    NetworkPolicy,
    NetworkUsage,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxState,
    SandboxStats,
)
from .driver import NodeAddress, NodeUnreachableError, RemoteDriver

__all__ = ["ADDRESS_TTL", "Fleet"]
T = TypeVar("T")

ADDRESS_TTL = 2.0
# a node that had no warm sandbox for an image and size is not asked again for that long
WARM_MISS_SECONDS = 1.0
SERVING = ("ready", "draining")
LocateSandbox = Callable[[str], Awaitable[str | None]]
LocateNode = Callable[[str], Awaitable[NodeAddress | None]]


@dataclass
class _Copy:
    """An image copy to a node under way, for the creates that wait for it."""

    done: anyio.Event = field(default_factory=anyio.Event)
    failure: VoidRunError | None = None


class Fleet:
    network_enabled = True

    def __init__(
        self,
        name: str,
        token: str,
        locate_sandbox: LocateSandbox,
        locate_node: LocateNode,
        *,
        timeout: float = 60.0,
    ) -> None:
        self.name = name
        self._token = token
        self._locate_sandbox = locate_sandbox
        self._locate_node = locate_node
        self._timeout = timeout
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50)
        )
        self._node_of: dict[str, str] = {}
        self._nodes: dict[str, tuple[float, RemoteDriver]] = {}
        self._warm_missed: dict[tuple[str, str, Path, int], float] = {}
        self._copies: dict[tuple[str, str], _Copy] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    def place(self, sandbox_id: str, node_id: str) -> None:
        self._node_of[sandbox_id] = node_id

    def forget_node(self, node_id: str) -> None:
        self._nodes.pop(node_id, None)

    async def node(self, node_id: str, *, serving: bool = True) -> RemoteDriver:
        cached = self._nodes.get(node_id)
        if cached is not None and cached[0] > time.monotonic():
            driver = cached[1]
        else:
            address = await self._locate_node(node_id)
            if address is None:
                raise DriverUnavailableError(f"node {node_id} is not registered")
            driver = RemoteDriver(
                address, self._token, self._client, name=self.name, timeout=self._timeout
            )
            self._nodes[node_id] = (time.monotonic() + ADDRESS_TTL, driver)
        state = driver.address.state
        if serving and state not in SERVING:
            raise DriverUnavailableError(
                f"the node of this sandbox ({node_id}) is {state}",
                "it missed its heartbeats; its sandboxes answer again when it is back, and "
                "turn error once it is declared lost",
            )
        return driver

    async def of(self, sandbox_id: str) -> RemoteDriver:
        node_id = self._node_of.get(sandbox_id)
        if node_id is None:
            node_id = await self._locate_sandbox(sandbox_id)
            if node_id is None:
                raise SandboxNotFoundError(details=sandbox_id)
            self._node_of[sandbox_id] = node_id
        return await self.node(node_id)

    async def _guard(self, sandbox_id: str, call: Callable[[RemoteDriver], Awaitable[T]]) -> T:
        driver = await self.of(sandbox_id)
        try:
            return await call(driver)
        except NodeUnreachableError:
            self.forget_node(driver.address.id)
            raise

    # -- Driver --------------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        return await self._guard(spec.sandbox_id, lambda d: d.create(spec))

    async def start(self, sandbox_id: str) -> SandboxInfo:
        return await self._guard(sandbox_id, lambda d: d.start(sandbox_id))

    async def stop(self, sandbox_id: str) -> None:
        await self._guard(sandbox_id, lambda d: d.stop(sandbox_id))

    async def destroy(self, sandbox_id: str) -> None:
        try:
            await self._guard(sandbox_id, lambda d: d.destroy(sandbox_id))
        except SandboxNotFoundError:
            pass
        self._node_of.pop(sandbox_id, None)

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        try:
            return await self._guard(sandbox_id, lambda d: d.inspect(sandbox_id))
        except SandboxNotFoundError:
            return SandboxInfo(SandboxState.GONE, Path("/nonexistent"), None)

    async def recover(self) -> dict[str, SandboxInfo]:
        return {}

    async def take_warm(
        self, node_id: str, isolation: str, rootfs: Path, disk_mb: int
    ) -> str | None:
        """A warm sandbox taken from ``node_id``'s pool (its id), or None. A node that had
        none for that image and size is not asked again for :data:`WARM_MISS_SECONDS` (a
        round trip a cold create would otherwise pay each time)."""
        key = (node_id, isolation, rootfs, disk_mb)
        missed = self._warm_missed.get(key)
        if missed is not None and time.monotonic() - missed < WARM_MISS_SECONDS:
            return None
        driver = await self.node(node_id)
        try:
            taken = await driver.take_warm(isolation, rootfs, disk_mb)
        except NodeUnreachableError:
            self.forget_node(node_id)
            raise
        if taken is None:
            if len(self._warm_missed) > 4096:  # bounded: old entries go
                self._warm_missed.clear()
            self._warm_missed[key] = time.monotonic()
        else:
            self._warm_missed.pop(key, None)
        return taken

    async def copy_image(self, node_id: str, image_id: str, source: str, within: float) -> None:
        """Copy an image to ``node_id`` from node ``source`` (``node/images.py``). Creates
        that wait for the same copy share it."""
        key = (node_id, image_id)
        running = self._copies.get(key)
        if running is None:
            running = self._copies[key] = _Copy()
            try:
                driver = await self.node(node_id)
                await driver.copy_image(image_id, source, within=within)
            except VoidRunError as exc:
                running.failure = exc
                if isinstance(exc, NodeUnreachableError):
                    self.forget_node(node_id)
            finally:
                del self._copies[key]
                running.done.set()
        else:
            await running.done.wait()
        if running.failure is not None:
            raise running.failure

    async def hand_out(self, spec: SandboxSpec) -> SandboxInfo:
        return await self._guard(spec.sandbox_id, lambda d: d.hand_out(spec))

    async def pause(self, sandbox_id: str) -> None:
        await self._guard(sandbox_id, lambda d: d.pause(sandbox_id))

    async def resume(self, sandbox_id: str) -> None:
        await self._guard(sandbox_id, lambda d: d.resume(sandbox_id))

    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        await self._guard(
            sandbox_id,
            lambda d: d.retarget(sandbox_id, hostname=hostname, cpu=cpu, mem_mb=mem_mb, env=env),
        )

    async def stats(self, sandbox_id: str) -> SandboxStats:
        return await self._guard(sandbox_id, lambda d: d.stats(sandbox_id))

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._guard(sandbox_id, lambda d: d.set_network_policy(sandbox_id, policy))

    async def network_usage(self, sandbox_id: str) -> NetworkUsage | None:
        return await self._guard(sandbox_id, lambda d: d.network_usage(sandbox_id))

    def network_usage_snapshot(self) -> dict[str, NetworkUsage]:
        return {}

    async def netns_path(self, sandbox_id: str) -> Path:
        return await self._guard(sandbox_id, lambda d: d.netns_path(sandbox_id))

    async def serve_network(self) -> None:
        return None

    async def open_port(self, sandbox_id: str, port: int, *, within: float) -> socket.socket:
        return await self._guard(sandbox_id, lambda d: d.open_port(sandbox_id, port, within=within))
