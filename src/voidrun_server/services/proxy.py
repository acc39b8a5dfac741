"""Previews: who may reach which port of which sandbox, and the connections that carry it.

The rules (``docs/previews.md``):

* Only ports declared ``http`` in the sandbox's ``ports`` are served; any other is 404.
* A port is private unless declared ``"public": true``. Private ports take the ``X-API-Key`` of
  the sandbox's org (another org's key gets the 404 an unknown sandbox gets, as on every
  sandbox route) or the sandbox's traffic token (``traffic_tokens.py``). Without either: 401,
  whether or not the sandbox or port exists.
* A paused or stopped sandbox is woken by the request, as by every data-plane call, and each
  exchange counts as activity for auto-sleep.
* At most ``proxy_max_connections_per_sandbox`` exchanges (requests in flight and WebSockets)
  per sandbox and ``…_per_org`` per org at once; one more is 429. So one tenant cannot take
  the server's file descriptors.

HTTP goes through one httpcore pool whose backend opens ports inside sandboxes
(``proxy_transport.py``): keep-alive per sandbox and port, h11's strict parsing of whatever a
server inside sends. Deadlines: connecting (``proxy_connect_timeout_seconds``), and the response
head once the request is sent (``proxy_response_timeout_seconds``). Bodies are not timed; they
move as fast as the reader takes them, never buffered beyond one chunk.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections import Counter
from collections.abc import AsyncIterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import httpcore

from .. import ids
from ..config import Settings
from ..errors import (
    AuthenticationError,
    NotFoundError,
    ServiceUnavailableError,
    TooManyConnectionsError,
    UpstreamError,
    UpstreamTimeoutError,
)
from ..store.repos import sandboxes as repo
from .accounts import Principal
from .lifecycle import Status
from .proxy_pool import UpstreamPool
from .proxy_transport import SandboxNetwork
from .sandboxes import SandboxService
from .traffic_tokens import TrafficTokens

__all__ = ["ConnectionLimits", "ProxyService", "Target"]

SECRET_FILE = "preview-secret"
KEEPALIVE_SECONDS = 30.0
TOUCHED_LIMIT = 10_000
TOUCH_EVERY = 1.0
NO_CREDENTIALS = "authentication required"
HOW_TO_AUTHENTICATE = (
    "send X-API-Key, or the sandbox's traffic token (public-urls' trafficToken) in the "
    "X-VoidRun-Token header, the voidrun_token query parameter or cookie; or declare the port "
    '"public": true'
)


@dataclass(frozen=True)
class Target:
    """A declared port of a sandbox that the caller may reach."""

    sandbox_id: str
    org_id: str
    port: int
    public: bool


class ConnectionLimits:
    def __init__(self, per_sandbox: int, per_org: int, total: int) -> None:
        self.per_sandbox, self.per_org, self.total = per_sandbox, per_org, total
        self._sandboxes: Counter[str] = Counter()
        self._orgs: Counter[str] = Counter()
        self.open = 0

    @contextmanager
    def hold(self, target: Target) -> Iterator[None]:
        sandbox, org = target.sandbox_id, target.org_id
        if self.open >= self.total:
            raise ServiceUnavailableError(
                "Too many proxied connections on this server",
                f"at most {self.total} at once; retry later",
            )
        if self._sandboxes[sandbox] >= self.per_sandbox:
            raise TooManyConnectionsError(
                details=f"at most {self.per_sandbox} at once per sandbox; retry later"
            )
        if self._orgs[org] >= self.per_org:
            raise TooManyConnectionsError(
                details=f"at most {self.per_org} at once per org; retry later"
            )
        self._sandboxes[sandbox] += 1
        self._orgs[org] += 1
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1
            for counter, key in ((self._sandboxes, sandbox), (self._orgs, org)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]


class ProxyService:
    def __init__(self, settings: Settings, sandboxes: SandboxService, tokens: TrafficTokens):
        self.settings = settings
        self.sandboxes = sandboxes
        self.tokens = tokens
        self.limits = ConnectionLimits(
            settings.proxy_max_connections_per_sandbox,
            settings.proxy_max_connections_per_org,
            settings.proxy_max_connections,
        )
        self._touched: dict[str, float] = {}
        network = SandboxNetwork(self.open_port, settings.proxy_connect_timeout_seconds)
        self.pool = UpstreamPool(network.connect, KEEPALIVE_SECONDS)
        sandboxes.row_changed.append(self._sandbox_changed)

    @classmethod
    async def create(cls, settings: Settings, sandboxes: SandboxService) -> ProxyService:
        tokens = await anyio.to_thread.run_sync(TrafficTokens.load, settings.data_dir / SECRET_FILE)
        return cls(settings, sandboxes, tokens)

    # -- access ----------------------------------------------------------------------------

    async def authorize(
        self, sandbox_id: str, port: int, caller: Principal | None, token: str | None
    ) -> Target:
        """The target, if these credentials may reach it (see the module docstring)."""
        owner = await self._owner(sandbox_id)
        declared = None
        if owner is not None:
            declared = next((p for p in owner[1] if p.get("port") == port and _is_http(p)), None)
        public = declared is not None and declared.get("public") is True
        if public:
            pass  # anyone, with or without credentials
        elif caller is not None:
            if owner is None or owner[0] != caller.org_id:
                raise NotFoundError("Sandbox not found")
        elif token is None:
            raise AuthenticationError(NO_CREDENTIALS, HOW_TO_AUTHENTICATE)
        elif owner is None or not self.tokens.check(sandbox_id, token):
            raise AuthenticationError("invalid traffic token", HOW_TO_AUTHENTICATE)
        if owner is None or declared is None:
            raise NotFoundError(
                f"Port {port} is not declared",
                "only ports declared with protocol http in the sandbox's ports are served",
            )
        return Target(sandbox_id, owner[0], port, public)

    async def _owner(self, sandbox_id: str) -> tuple[str, list[dict[str, Any]]] | None:
        """(org id, declared ports) of a sandbox that is not deleted: from the data plane's
        rows of running sandboxes (no query; a PATCH or status change drops the row there),
        else from the database."""
        row = self.sandboxes.live_row(sandbox_id)
        if row is None and ids.is_id(sandbox_id):
            async with self.sandboxes.sessions() as session:
                row = await repo.get(session, sandbox_id)
        if row is None or row.status == Status.DELETED:
            return None
        return row.org_id, row.ports

    def token_for(self, sandbox_id: str) -> str:
        return self.tokens.token_for(sandbox_id)

    async def wake(self, target: Target) -> None:
        """Paused or stopped: started, as every data-plane call does."""
        owner = Principal(key_id="", org_id=target.org_id, user_id="")
        await self.sandboxes.ensure_running(owner, target.sandbox_id)

    def touch(self, target: Target) -> None:
        """The sandbox is in use (auto-sleep); cheap enough for every chunk."""
        now = time.monotonic()
        if now - self._touched.get(target.sandbox_id, 0.0) >= TOUCH_EVERY:
            if len(self._touched) >= TOUCHED_LIMIT:
                self._touched.clear()
            self._touched[target.sandbox_id] = now
            self.sandboxes.activity.record(target.sandbox_id)

    # -- connections -----------------------------------------------------------------------

    def _sandbox_changed(self, sandbox_id: str) -> None:
        """Its status or row changed (stopped, paused, deleted, ports): its idle connections go."""
        if self.pool.idle_count(sandbox_id):
            self.sandboxes.spawn(lambda: self.pool.forget(sandbox_id))

    async def open_port(self, sandbox_id: str, port: int, within: float) -> socket.socket:
        return await self.sandboxes.driver.open_port(sandbox_id, port, within=within)

    async def send(
        self,
        target: Target,
        method: bytes,
        path: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes] | None,
    ) -> httpcore.Response:
        """Send a request to the target; returns once the response head arrived. The caller
        reads ``response.stream`` and must ``aclose`` it (that frees or closes the connection)."""
        timeout = self.settings.proxy_response_timeout_seconds
        extensions: dict[str, Any] = {
            "timeout": {"connect": self.settings.proxy_connect_timeout_seconds}
        }
        head_deadline = anyio.CancelScope()  # for a request with a body (see below)
        if body is not None:  # the head's clock starts once the body is sent

            async def trace(event: str, info: dict[str, Any]) -> None:
                if event == "http11.send_request_body.complete":
                    head_deadline.deadline = anyio.current_time() + timeout
                elif event == "http11.receive_response_headers.complete":
                    head_deadline.deadline = math.inf

            extensions["trace"] = trace
        request = httpcore.Request(
            method,
            httpcore.URL(
                scheme=b"http", host=target.sandbox_id.encode(), port=target.port, target=path
            ),
            headers=headers,
            content=body,
            extensions=extensions,
        )
        no_head = f"no response head from port {target.port} within {timeout:g}s"
        try:
            if body is None:  # nothing to upload: the clock starts now (asyncio's timeout is
                # a fraction of an anyio cancel scope's cost, and this is every GET)
                head = asyncio.timeout(timeout)
                try:
                    async with head:
                        return await self.pool.request(target.sandbox_id, target.port, request)
                except TimeoutError as exc:
                    if head.expired():
                        raise UpstreamTimeoutError(details=no_head) from exc
                    raise
            with head_deadline:
                response = await self.pool.request(target.sandbox_id, target.port, request)
                head_deadline.deadline = math.inf
        except httpcore.TimeoutException as exc:
            raise UpstreamTimeoutError(details=str(exc) or "timed out") from exc
        except httpcore.ProtocolError as exc:
            raise UpstreamError(details=f"invalid HTTP from port {target.port}: {exc}") from exc
        except httpcore.NetworkError as exc:
            raise UpstreamError(details=f"connection to port {target.port} failed: {exc}") from exc
        if head_deadline.cancelled_caught:
            raise UpstreamTimeoutError(details=no_head)
        return response


def _is_http(port: dict[str, Any]) -> bool:
    return bool(port.get("protocol", "http") == "http")
