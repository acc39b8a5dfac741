"""The node's internal HTTP API (``/internal/v1``): the driver calls of API replicas.

Every route but ``/internal/v1/health`` wants the node token in ``X-VoidRun-Node-Token``,
compared in constant time; a user API key means nothing here and the public ``/api`` is not
served at all. Driver errors go back by class (``drivers/remote/wire.py``).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import ids
from ..agentclient import AgentError
from ..drivers.base import (
    DriverError,
    DriverTimeoutError,
    DriverUnavailableError,
    NetworkPolicy,
    SandboxNotFoundError,
    SandboxSpec,
    SandboxStateError,
    UnsupportedByDriverError,
)
from ..drivers.driverset import DriverSet
from ..drivers.remote import wire
from ..errors import VoidRunError
from ..images.locations import located
from ..services.agents import AgentSocket, handshake
from .images import NodeImageRoutes
from .pools import NodePools

log = logging.getLogger(__name__)
Handler = Callable[[Request], Awaitable[Response]]
STATUS: list[tuple[type[DriverError], int]] = [
    (SandboxNotFoundError, 404),
    (SandboxStateError, 409),
    (UnsupportedByDriverError, 400),
    (DriverUnavailableError, 503),
    (DriverTimeoutError, 504),
]


class NodeApi:
    def __init__(
        self,
        node_id: str,
        drivers: DriverSet | None,
        token: str,
        images_root: Path,
        ready_timeout: float = 30.0,
    ) -> None:
        self.node_id = node_id
        self.images_root = images_root
        self.ready_timeout = ready_timeout
        self.drivers = drivers
        self.token = token
        self.unavailable = ""
        self.pools: NodePools | None = None
        self.images: NodeImageRoutes | None = None

    def routes(self) -> list[Route]:
        p = wire.PREFIX
        guard = self._guard
        return [
            Route(f"{p}/health", self.health, methods=["GET"]),
            Route(f"{p}/sandboxes", guard(self.create), methods=["POST"]),
            Route(f"{p}/pool/take", guard(self.take_warm), methods=["POST"]),
            Route(f"{p}/sandboxes/{{id}}/handout", guard(self.hand_out), methods=["POST"]),
            Route(f"{p}/sandboxes/{{id}}", guard(self.inspect), methods=["GET"]),
            Route(f"{p}/sandboxes/{{id}}", guard(self.destroy), methods=["DELETE"]),
            Route(f"{p}/sandboxes/{{id}}/stats", guard(self.stats), methods=["GET"]),
            Route(f"{p}/sandboxes/{{id}}/network", guard(self.usage), methods=["GET"]),
            Route(f"{p}/sandboxes/{{id}}/network", guard(self.policy), methods=["PUT"]),
            Route(f"{p}/sandboxes/{{id}}/{{verb}}", guard(self.verb), methods=["POST"]),
            *(self.images.routes(guard) if self.images is not None else ()),
        ]

    async def health(self, request: Request) -> Response:
        ok = self.drivers is not None
        body: dict[str, Any] = {"status": "ok" if ok else "unavailable", "node": self.node_id}
        if not ok:
            body["reason"] = self.unavailable
        if self.pools is not None:
            body["pool"] = self.pools.status()
        return JSONResponse(body, status_code=200 if ok else 503)

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            given = request.headers.get(wire.TOKEN_HEADER, "")
            if not self.token or not hmac.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse({"error": "Unauthorized", "details": "node token"}, 401)
            sandbox_id = request.path_params.get("id")
            if sandbox_id is not None and not ids.is_id(sandbox_id):
                return JSONResponse({"error": "Invalid request", "details": "sandbox id"}, 400)
            if self.drivers is None:
                error = DriverUnavailableError("this node cannot run sandboxes", self.unavailable)
                return JSONResponse(wire.error_to_wire(error), 503)
            try:
                return await handler(request)
            except DriverError as exc:
                status = next((s for cls, s in STATUS if isinstance(exc, cls)), 500)
                return JSONResponse(wire.error_to_wire(exc), status)
            except VoidRunError as exc:
                log.warning("node call failed: %s", exc)
                return JSONResponse(wire.error_to_wire(DriverError(exc.message, exc.details)), 500)
            except (ValueError, KeyError, TypeError) as exc:
                return JSONResponse({"error": "Invalid request", "details": repr(exc)}, 400)

        return guarded

    @property
    def _drivers(self) -> DriverSet:
        assert self.drivers is not None
        return self.drivers

    @staticmethod
    async def _body(request: Request) -> dict[str, Any]:
        return wire.object_from_json(await request.body())

    def _spec(self, body: dict[str, Any]) -> SandboxSpec:
        """A replica's spec, its image paths (as the image rows hold them) found here."""
        spec = wire.spec_from_wire(body)
        root = self.images_root
        return replace(
            spec,
            rootfs=located(root, str(spec.rootfs)),
            layers=tuple(located(root, str(layer)) for layer in spec.layers),
        )

    async def create(self, request: Request) -> Response:
        spec = self._spec(await self._body(request))
        if not ids.is_id(spec.sandbox_id):
            raise ValueError("sandbox id")
        if self.pools is None:
            info = await self._drivers.create(spec)
        else:
            with self.pools.serving(spec.isolation):  # the pool's refill waits for it
                info = await self._drivers.create(spec)
        try:  # as the all-in-one server does before a create returns: the agent answers
            await handshake(AgentSocket.of(info), self.ready_timeout)
        except (AgentError, OSError) as exc:
            raise DriverError("the new sandbox's agent did not answer", str(exc)) from exc
        return JSONResponse(wire.info_to_wire(info), 201)

    async def take_warm(self, request: Request) -> Response:
        """The id of a warm sandbox of that image and disk size, taken for the caller (or
        null); ``…/handout`` then makes it the caller's (``node/pools.py``)."""
        body = await self._body(request)
        taken = None
        if self.pools is not None:
            rootfs, disk_mb = located(self.images_root, str(body["rootfs"])), int(body["diskMb"])
            taken = self.pools.take(str(body.get("isolation") or ""), rootfs, disk_mb)
        return JSONResponse({"sandboxId": taken})

    async def hand_out(self, request: Request) -> Response:
        spec = self._spec(await self._body(request))
        if spec.sandbox_id != request.path_params["id"] or self.pools is None:
            raise ValueError("sandbox id")
        await self.pools.hand_out(spec)
        info = await self._drivers.inspect(spec.sandbox_id)
        return JSONResponse(wire.info_to_wire(info))

    async def inspect(self, request: Request) -> Response:
        info = await self._drivers.inspect(request.path_params["id"])
        return JSONResponse(wire.info_to_wire(info))

    async def destroy(self, request: Request) -> Response:
        if self.pools is not None:
            self.pools.forget(request.path_params["id"])
        await self._drivers.destroy(request.path_params["id"])
        return JSONResponse({})

    async def stats(self, request: Request) -> Response:
        stats = await self._drivers.stats(request.path_params["id"])
        return JSONResponse(wire.stats_to_wire(stats))

    async def usage(self, request: Request) -> Response:
        sandbox_id = request.path_params["id"]
        driver = self._drivers.networked_of(sandbox_id)
        usage = await driver.network_usage(sandbox_id) if driver is not None else None
        return JSONResponse({"usage": wire.usage_to_wire(usage)})

    async def policy(self, request: Request) -> Response:
        policy = NetworkPolicy.from_wire(await self._body(request))
        await self._drivers.set_network_policy(request.path_params["id"], policy)
        return JSONResponse({})

    async def verb(self, request: Request) -> Response:
        sandbox_id, verb = request.path_params["id"], request.path_params["verb"]
        drivers = self._drivers
        if verb == "start":
            return JSONResponse(wire.info_to_wire(await drivers.start(sandbox_id)))
        if verb == "stop":
            await drivers.stop(sandbox_id)
        elif verb == "pause":
            await drivers.pause(sandbox_id)
        elif verb == "resume":
            await drivers.resume(sandbox_id)
        elif verb == "retarget":
            body = await self._body(request)
            await drivers.retarget(
                sandbox_id,
                hostname=str(body["hostname"]),
                cpu=int(body["cpu"]),
                mem_mb=int(body["memMb"]),
                env={str(k): str(v) for k, v in dict(body.get("env") or {}).items()},
            )
        else:
            return JSONResponse({"error": "Not found", "details": verb}, 404)
        return JSONResponse({})
