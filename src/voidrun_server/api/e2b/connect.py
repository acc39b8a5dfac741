"""Connect RPC over ASGI, JSON codec only: what the E2B SDKs speak to envd.

- Unary: ``POST`` with ``application/json``; the answer is the message as JSON (200), or an
  error ``{"code": "<connect code>", "message"}`` with the code's HTTP status.
- Server streaming: the request is one envelope (``application/connect+json``); the answer is
  200 and a stream of envelopes, the last one flagged end-of-stream (``0x02``) carrying
  ``{}`` or ``{"error": {...}}``. While nothing else is sent, a keepalive message goes out every
  ``Keepalive-Ping-Interval`` seconds (bounded).
- Client streaming: a stream of envelopes in, one message envelope and end-of-stream out.

An envelope is one flags byte, a big-endian 32-bit length and the payload. ``Connect-Timeout-Ms``
bounds the call: past it, ``deadline_exceeded``. Compression is not offered (identity only).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, cast

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from starlette.types import Receive, Scope, Send

Message = dict[str, Any]
JSON_TYPE = b"application/json"
STREAM_TYPE = b"application/connect+json"
END_STREAM = 0x02
COMPRESSED = 0x01
HEADER = struct.Struct(">BI")
MAX_TIMEOUT_DIGITS = 10
DEFAULT_KEEPALIVE = 30.0
MIN_KEEPALIVE, MAX_KEEPALIVE = 1.0, 50.0
DEADLINE_SLACK = 0.5  # a client that leaves this close to its deadline left because of it

# Connect's codes and the HTTP statuses of unary errors (the Connect protocol's table).
STATUS_OF_CODE = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}


class RpcError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        assert code in STATUS_OF_CODE, code
        self.code = code
        self.message = message

    def body(self) -> Message:
        return {"code": self.code, "message": self.message}


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(flags, len(payload)) + payload


def encode(message: Message) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode(data: bytes) -> Message:
    try:
        message = json.loads(data) if data.strip() else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise RpcError("invalid_argument", f"the message is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise RpcError("invalid_argument", "the message must be a JSON object")
    return message


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def media_type(scope: Scope) -> bytes:
    value = header(scope, b"content-type") or b""
    return value.split(b";", 1)[0].strip().lower()


def deadline(scope: Scope) -> float:
    """Seconds from ``Connect-Timeout-Ms`` (inf when absent)."""
    raw = header(scope, b"connect-timeout-ms")
    if raw is None:
        return math.inf
    if not raw.isdigit() or len(raw) > MAX_TIMEOUT_DIGITS:
        raise RpcError("invalid_argument", "Connect-Timeout-Ms must be 1 to 10 digits")
    return int(raw) / 1000


def keepalive_interval(scope: Scope) -> float:
    raw = header(scope, b"keepalive-ping-interval")
    try:
        seconds = float(raw) if raw else DEFAULT_KEEPALIVE
    except ValueError:
        seconds = DEFAULT_KEEPALIVE
    if not math.isfinite(seconds):
        seconds = DEFAULT_KEEPALIVE
    return min(max(seconds, MIN_KEEPALIVE), MAX_KEEPALIVE)


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RpcError("canceled", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RpcError("resource_exhausted", f"the request is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def envelopes(receive: Receive, limit: int) -> AsyncIterator[Message]:
    """The messages of an enveloped request body, as they arrive."""
    buffer = bytearray()
    more = True
    while True:
        while len(buffer) >= HEADER.size:
            flags, length = HEADER.unpack_from(buffer)
            if length > limit:
                raise RpcError("resource_exhausted", f"a message is larger than {limit} bytes")
            if len(buffer) < HEADER.size + length:
                break
            payload = bytes(buffer[HEADER.size : HEADER.size + length])
            del buffer[: HEADER.size + length]
            if flags & COMPRESSED:
                raise RpcError("unimplemented", "compressed messages are not supported")
            if flags & END_STREAM:
                return
            yield decode(payload)
        if not more:
            if buffer:
                raise RpcError("invalid_argument", "the request ends inside a message")
            return
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RpcError("canceled", "the client went away")
        buffer += message.get("body", b"")
        more = message.get("more_body", False)


async def send_json(send: Send, status: int, body: Message, content_type: bytes) -> None:
    data = encode(body)
    headers = [(b"content-type", content_type), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def send_error(send: Send, error: RpcError) -> None:
    await send_json(send, STATUS_OF_CODE[error.code], error.body(), JSON_TYPE)


Unary = Callable[[Message], Awaitable[Message]]
ServerStream = Callable[[Message], AsyncIterator[Message]]
ClientStream = Callable[[AsyncIterator[Message]], Awaitable[Message]]
Translate = Callable[[BaseException], RpcError | None]


def _check_type(scope: Scope, wanted: bytes) -> None:
    if media_type(scope) != wanted:
        raise RpcError("invalid_argument", f"Content-Type must be {wanted.decode()}")


async def _answered(
    scope: Scope, send: Send, call: Callable[[], Awaitable[Message]], translate: Translate
) -> Message | None:
    """``call()`` under the request's deadline; a failure is answered here as a Connect error
    (None returned), one ``translate`` does not know is raised."""
    try:
        with anyio.fail_after(deadline(scope)):
            return await call()
    except TimeoutError:
        await send_error(send, RpcError("deadline_exceeded", "the call's deadline passed"))
    except Exception as exc:
        error = exc if isinstance(exc, RpcError) else translate(exc)
        if error is None:
            raise
        await send_error(send, error)
    return None


async def unary(
    scope: Scope, receive: Receive, send: Send, handler: Unary, translate: Translate, limit: int
) -> None:
    async def call() -> Message:
        _check_type(scope, JSON_TYPE)
        return await handler(decode(await read_body(receive, limit)))

    answer = await _answered(scope, send, call, translate)
    if answer is not None:
        await send_json(send, 200, answer, JSON_TYPE)


async def client_stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    handler: ClientStream,
    translate: Translate,
    limit: int,
) -> None:
    async def call() -> Message:
        _check_type(scope, STREAM_TYPE)
        return await handler(envelopes(receive, limit))

    answer = await _answered(scope, send, call, translate)
    if answer is None:
        return
    await _start_stream(send)
    await send({"type": "http.response.body", "body": envelope(encode(answer)), "more_body": True})
    await send({"type": "http.response.body", "body": envelope(b"{}", END_STREAM)})


async def _start_stream(send: Send) -> None:
    headers = [(b"content-type", STREAM_TYPE), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def server_stream(
    scope: Scope,
    receive: Receive,
    send: Send,
    handler: ServerStream,
    translate: Translate,
    keepalive: Message,
    limit: int,
) -> RpcError | None:
    """Errors before the first message are plain Connect errors (an HTTP status); after it they
    end the stream. The handler runs in a task of its own, so keepalives flow while it waits.
    Returns the error the call ended with."""
    try:
        _check_type(scope, STREAM_TYPE)
        within = deadline(scope)
        request: Message | None = None
        async for message in envelopes(receive, limit):
            if request is not None:
                raise RpcError("invalid_argument", "a server-streaming call takes one message")
            request = message
        if request is None:
            raise RpcError("invalid_argument", "the request has no message")
    except RpcError as exc:
        await send_error(send, exc)
        return exc
    interval = keepalive_interval(scope)
    sender, receiver = anyio.create_memory_object_stream[Message](1)
    outcome: list[RpcError | None] = [None]
    started: list[bool] = [False]
    gone = anyio.Event()
    began = anyio.current_time()
    with anyio.move_on_after(within) as scope_deadline:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_produce, handler, request, sender, translate, outcome)
            tasks.start_soon(_watch_client, receive, gone, tasks.cancel_scope)
            try:
                await _relay(receiver, send, keepalive, interval, started)
            finally:
                tasks.cancel_scope.cancel()
    if gone.is_set():  # nobody to tell; a client leaving at its deadline gave up on it
        if anyio.current_time() >= began + within - DEADLINE_SLACK:
            return RpcError("deadline_exceeded", "the client's deadline passed")
        return RpcError("canceled", "the client went away")
    error = outcome[0]
    if scope_deadline.cancelled_caught:
        error = RpcError("deadline_exceeded", "the call's deadline passed")
    if not started[0]:
        if error is not None:
            await send_error(send, error)
            return error
        await _start_stream(send)
    end: Message = {"error": error.body()} if error is not None else {}
    await send({"type": "http.response.body", "body": envelope(encode(end), END_STREAM)})
    return error


async def _watch_client(receive: Receive, gone: anyio.Event, scope: anyio.CancelScope) -> None:
    """The request body is read: what comes next is the client going away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            gone.set()
            scope.cancel()
            return


async def _produce(
    handler: ServerStream,
    request: Message,
    sender: MemoryObjectSendStream[Message],
    translate: Translate,
    outcome: list[RpcError | None],
) -> None:
    async with sender:
        try:
            async with aclosing(cast(AsyncGenerator[Message, None], handler(request))) as messages:
                async for message in messages:
                    await sender.send(message)
        except Exception as exc:
            error = exc if isinstance(exc, RpcError) else translate(exc)
            if error is None:
                raise
            outcome[0] = error


async def _relay(
    receiver: MemoryObjectReceiveStream[Message],
    send: Send,
    keepalive: Message,
    interval: float,
    started: list[bool],
) -> None:
    """Messages out as they come, keepalives in the gaps; ``started[0]`` once the response
    started (kept in a list: a deadline may cancel this at any await)."""
    async with receiver:
        while True:
            message: Message | None = None
            with anyio.move_on_after(interval if started[0] else math.inf):
                try:
                    message = await receiver.receive()
                except anyio.EndOfStream:
                    return
            if not started[0]:
                started[0] = True
                await _start_stream(send)
            payload = envelope(encode(message if message is not None else keepalive))
            await send({"type": "http.response.body", "body": payload, "more_body": True})
