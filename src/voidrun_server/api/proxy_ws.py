"""The preview proxy's WebSocket relay: the client's WebSocket to one opened in the sandbox.

The upstream handshake comes first (``websockets`` over the socket the driver opened inside the
sandbox, within ``proxy_response_timeout_seconds``), so a refusal or a server that never answers
is a plain HTTP error to the client (502/504) and the client's WebSocket is accepted only with
the subprotocol the server inside chose. Then messages go both ways as they come, text as text
and binary as binary; each side's close is passed on with its code (1005/1006, which cannot be
sent, become 1000/1011). Backpressure: a message is read from one side only once the other
side took the previous one; a message is at most ``MAX_MESSAGE`` bytes (then 1009).
"""

from __future__ import annotations

import logging

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ..errors import UpstreamError, UpstreamTimeoutError
from ..services.proxy import ProxyService, Target

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024  # uvicorn's limit for client messages
MAX_QUEUE = 4
CLOSE_LIMIT = 5.0
_HANDSHAKE_HEADERS = frozenset(
    {
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"host",
        b"user-agent",
    }
)


async def relay_websocket(
    websocket: WebSocket,
    proxy: ProxyService,
    target: Target,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
) -> None:
    upstream = await _connect(websocket, proxy, target, path, headers)
    try:
        await websocket.accept(subprotocol=upstream.subprotocol)
        codes = await _pump(websocket, upstream, proxy, target)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_LIMIT):
            await upstream.close()
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_LIMIT):
            try:
                await websocket.close(*codes)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the client left first


async def _connect(
    websocket: WebSocket,
    proxy: ProxyService,
    target: Target,
    path: bytes,
    headers: list[tuple[bytes, bytes]],
) -> ClientConnection:
    settings = proxy.settings
    sock = await proxy.open_port(
        target.sandbox_id, target.port, settings.proxy_connect_timeout_seconds
    )
    offered = websocket.headers.get("sec-websocket-protocol", "")
    subprotocols = [p.strip() for p in offered.split(",") if p.strip()]
    extra = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name not in _HANDSHAKE_HEADERS
    ]
    user_agent = websocket.headers.get("user-agent")
    if user_agent:
        extra.append(("user-agent", user_agent))
    uri = f"ws://localhost:{target.port}{path.decode('latin-1')}"
    try:
        return await connect(
            uri,
            sock=sock,
            proxy=None,
            additional_headers=extra,
            user_agent_header=None,
            subprotocols=subprotocols or None,  # type: ignore[arg-type]
            compression=None,
            open_timeout=settings.proxy_response_timeout_seconds,
            ping_interval=None,
            max_size=MAX_MESSAGE,
            max_queue=MAX_QUEUE,
        )
    except TimeoutError as exc:
        sock.close()
        raise UpstreamTimeoutError(
            details=f"no WebSocket handshake from port {target.port} in the sandbox"
        ) from exc
    except InvalidStatus as exc:
        sock.close()
        raise UpstreamError(
            details=f"port {target.port} refused the WebSocket (HTTP {exc.response.status_code})"
        ) from exc
    except (WebSocketException, OSError, ValueError) as exc:
        sock.close()
        raise UpstreamError(details=f"WebSocket handshake with port {target.port}: {exc}") from exc


async def _pump(
    websocket: WebSocket, upstream: ClientConnection, proxy: ProxyService, target: Target
) -> tuple[int, str]:
    """Relay until either side closes; returns the close code and reason for the client."""
    outcome = (1000, "")
    async with anyio.create_task_group() as tasks:

        async def client_to_upstream() -> None:
            try:
                while True:
                    message = await websocket.receive()
                    if message["type"] == "websocket.disconnect":
                        code = _sendable(message.get("code", 1000), 1000)
                        await upstream.close(code, message.get("reason") or "")
                        break
                    text = message.get("text")
                    await upstream.send(text if text is not None else message.get("bytes") or b"")
                    proxy.touch(target)
            except (WebSocketDisconnect, ConnectionClosed, RuntimeError, OSError):
                pass
            tasks.cancel_scope.cancel()

        async def upstream_to_client() -> None:
            nonlocal outcome
            try:
                async for data in upstream:
                    if isinstance(data, str):
                        await websocket.send_text(data)
                    else:
                        await websocket.send_bytes(data)
                    proxy.touch(target)
            except ConnectionClosed:
                pass
            except (WebSocketDisconnect, RuntimeError, OSError):
                tasks.cancel_scope.cancel()
                return
            code = upstream.close_code
            if code is None or code == 1006:
                outcome = (1011, "the server in the sandbox went away")
            else:
                outcome = (_sendable(code, 1000), (upstream.close_reason or "")[:120])
            tasks.cancel_scope.cancel()

        tasks.start_soon(client_to_upstream)
        tasks.start_soon(upstream_to_client)
    return outcome


def _sendable(code: int, fallback: int) -> int:
    """A close code that may go on the wire (1005, 1006 and 1015 must not)."""
    if code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return fallback
