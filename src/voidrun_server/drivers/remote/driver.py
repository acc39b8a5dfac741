"""``RemoteDriver``: one node daemon's sandboxes, as calls to its internal API.

Control calls (create, stop, pause, ...) are HTTP requests to ``/internal/v1`` with the node
token; the data plane goes through the node's tunnel (``SandboxInfo.tunnel``: the agent
connection; :meth:`open_port`: a port inside the sandbox). A node that cannot be reached is a
:class:`NodeUnreachableError` (503); the error a node's driver raised comes back as the same
class. Snapshots (layer export) are not offered: the snapshot service answers a clear 400.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from ...agentclient import AgentConnectionError, TunnelRefusedError, open_tunnel
from ...agentclient._tunnel import NOT_FOUND, UNAVAILABLE
from ..base import (
    AgentTunnel,
    DriverTimeoutError,
    DriverUnavailableError,
    NetworkPolicy,
    NetworkUsage,
    PortClosedError,
    SandboxInfo,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxStateError,
    SandboxStats,
    UnsupportedByDriverError,
)
from . import wire

__all__ = ["NodeAddress", "NodeUnreachableError", "RemoteDriver"]


class NodeUnreachableError(DriverUnavailableError):
    message = "Sandbox node unreachable"


@dataclass(frozen=True)
class NodeAddress:
    id: str
    url: str
    tunnel_host: str
    tunnel_port: int
    state: str


def split_tunnel(tunnel: str) -> tuple[str, int]:
    host, _, port = tunnel.rpartition(":")
    return host.strip("[]"), int(port)


class RemoteDriver:
    """Implements the Driver protocol and Pausable, Retargetable, Observable, Networked and
    PortOpener for the sandboxes of one node."""

    network_enabled = True

    def __init__(
        self,
        address: NodeAddress,
        token: str,
        client: httpx.AsyncClient,
        *,
        name: str = "remote",
        timeout: float = 60.0,
    ) -> None:
        self.address = address
        self.name = name
        self._token = token
        self._client = client
        self._timeout = timeout

    # -- transport -----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        within: float | None = None,
    ) -> dict[str, Any]:
        url = f"{self.address.url}{wire.PREFIX}{path}"
        try:
            response = await self._client.request(
                method,
                url,
                json=body,
                headers={wire.TOKEN_HEADER: self._token},
                timeout=within or self._timeout,
            )
        except httpx.TimeoutException as exc:
            raise DriverTimeoutError(
                f"node {self.address.id} did not answer in time", f"{method} {path}"
            ) from exc
        except httpx.HTTPError as exc:
            raise NodeUnreachableError(
                f"node {self.address.id} is unreachable",
                f"{type(exc).__name__}: {exc}; is `voidrun-server node` running there?",
            ) from exc
        try:
            data = response.json()
        except ValueError:
            data = {}
        if response.status_code >= 400:
            data = data if isinstance(data, dict) else {}
            if response.status_code == 401:
                raise DriverUnavailableError(
                    f"node {self.address.id} refused this replica's token",
                    "VOIDRUN_NODE_TOKEN must be the same on API replicas and nodes",
                )
            if "error" in data:  # a user's error (node/images.py): the same class here
                raise wire.user_error_from_wire(response.status_code, data)
            raise wire.error_from_wire(data, self.address.id)
        return data if isinstance(data, dict) else {}

    def _info(self, sandbox_id: str, data: dict[str, Any]) -> SandboxInfo:
        state, pid = wire.info_from_wire(data)
        return SandboxInfo(
            state=state,
            agent_socket=Path(f"/{self.address.id}/{sandbox_id}"),  # names the remote agent
            pid=pid,
            agent_socket_owner=None,
            tunnel=AgentTunnel(
                self.address.tunnel_host, self.address.tunnel_port, self._token, sandbox_id
            ),
        )

    # -- Driver --------------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> SandboxInfo:
        data = await self._call("POST", "/sandboxes", wire.spec_to_wire(spec))
        return self._info(spec.sandbox_id, data)

    async def start(self, sandbox_id: str) -> SandboxInfo:
        return self._info(sandbox_id, await self._call("POST", f"/sandboxes/{sandbox_id}/start"))

    async def stop(self, sandbox_id: str) -> None:
        await self._call("POST", f"/sandboxes/{sandbox_id}/stop")

    async def destroy(self, sandbox_id: str) -> None:
        await self._call("DELETE", f"/sandboxes/{sandbox_id}")

    async def inspect(self, sandbox_id: str) -> SandboxInfo:
        return self._info(sandbox_id, await self._call("GET", f"/sandboxes/{sandbox_id}"))

    async def recover(self) -> dict[str, SandboxInfo]:
        return {}  # a node re-adopts its own sandboxes; the replica holds none

    # -- the node's images (node/images.py) -----------------------------------------------------

    async def copy_image(self, image_id: str, source: str, *, within: float) -> bool:
        """Have the node copy ``image_id`` from node ``source``; False: it held it already."""
        body = {"from": source}
        done = await self._call("POST", f"/images/{image_id}/copy", body, within=within)
        return bool(done.get("copied"))

    async def build_image(self, image_id: str, body: Mapping[str, Any]) -> None:
        """Start the import of a recorded ``building`` row on the node."""
        await self._call("POST", f"/images/{image_id}/build", body)

    async def image_log(self, image_id: str, position: int, wait: float) -> dict[str, Any]:
        path = f"/images/{image_id}/log?position={position}&wait={wait}"
        return await self._call("GET", path, within=wait + self._timeout)

    async def remove_image(self, rootfs: str) -> None:
        await self._call("POST", "/images/remove", {"rootfs": rootfs})

    # -- the node's warm pool (node/pools.py) ---------------------------------------------------

    async def take_warm(self, isolation: str, rootfs: Path, disk_mb: int) -> str | None:
        body = {"isolation": isolation, "rootfs": str(rootfs), "diskMb": disk_mb}
        taken = (await self._call("POST", "/pool/take", body)).get("sandboxId")
        return str(taken) if taken else None

    async def hand_out(self, spec: SandboxSpec) -> SandboxInfo:
        path = f"/sandboxes/{spec.sandbox_id}/handout"
        return self._info(spec.sandbox_id, await self._call("POST", path, wire.spec_to_wire(spec)))

    # -- capabilities --------------------------------------------------------------------------

    async def pause(self, sandbox_id: str) -> None:
        await self._call("POST", f"/sandboxes/{sandbox_id}/pause")

    async def resume(self, sandbox_id: str) -> None:
        await self._call("POST", f"/sandboxes/{sandbox_id}/resume")

    async def retarget(
        self, sandbox_id: str, *, hostname: str, cpu: int, mem_mb: int, env: Mapping[str, str]
    ) -> None:
        body = {"hostname": hostname, "cpu": cpu, "memMb": mem_mb, "env": dict(env)}
        await self._call("POST", f"/sandboxes/{sandbox_id}/retarget", body)

    async def stats(self, sandbox_id: str) -> SandboxStats:
        return wire.stats_from_wire(await self._call("GET", f"/sandboxes/{sandbox_id}/stats"))

    async def set_network_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        await self._call("PUT", f"/sandboxes/{sandbox_id}/network", policy.to_wire())

    async def network_usage(self, sandbox_id: str) -> NetworkUsage | None:
        data = await self._call("GET", f"/sandboxes/{sandbox_id}/network")
        return wire.usage_from_wire(data.get("usage"))

    def network_usage_snapshot(self) -> dict[str, NetworkUsage]:
        return {}  # each node's /metrics has its own sandboxes' traffic

    async def netns_path(self, sandbox_id: str) -> Path:
        raise UnsupportedByDriverError("the network namespace is on another node", sandbox_id)

    async def serve_network(self) -> None:
        return None

    async def open_port(self, sandbox_id: str, port: int, *, within: float) -> socket.socket:
        address = self.address
        try:
            return await open_tunnel(
                address.tunnel_host,
                address.tunnel_port,
                self._token,
                sandbox_id,
                f"port {port}",
                within,
            )
        except TunnelRefusedError as exc:
            if exc.kind == "closed":
                raise PortClosedError(details=f"port {port}") from exc
            if exc.kind == NOT_FOUND:
                raise SandboxStateError("the sandbox has no processes", sandbox_id) from exc
            if exc.kind == UNAVAILABLE:
                raise SandboxNotFoundError(str(exc), sandbox_id) from exc
            raise NodeUnreachableError(f"node {address.id} refused the tunnel", str(exc)) from exc
        except AgentConnectionError as exc:
            raise NodeUnreachableError(f"node {address.id} tunnel unreachable", str(exc)) from exc
