"""The gateway's Connect framing (``api/e2b/connect.py``), its proto-JSON parsing and its
multipart reader, against hand-made ASGI exchanges: no server, no sandbox."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from voidrun_server.api.e2b import connect, multipart, process
from voidrun_server.api.e2b.connect import RpcError
from voidrun_server.api.e2b.protojson import parse, unb64
from voidrun_server.errors import InvalidInputError

Message = dict[str, Any]


def env(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def scope(content_type: bytes, **headers: bytes) -> dict[str, Any]:
    pairs = [(b"content-type", content_type)]
    pairs += [(k.replace("_", "-").encode(), v) for k, v in headers.items()]
    return {"type": "http", "method": "POST", "headers": pairs}


def feeder(body: bytes, piece: int = 0) -> Any:
    """An ASGI receive giving ``body`` in pieces of ``piece`` bytes (0: at once)."""
    parts = [body[i : i + piece] for i in range(0, len(body), piece)] if piece else [body]
    parts = parts or [b""]

    async def receive() -> dict[str, Any]:
        if parts:
            chunk = parts.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(parts)}
        await anyio.sleep_forever()
        raise AssertionError

    return receive


class Sent:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = b""
        self.keepalive_seen = anyio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = dict(message["headers"])
        else:
            self.body += message.get("body", b"")
            if b'"keepalive"' in message.get("body", b""):
                self.keepalive_seen.set()

    def frames(self) -> list[tuple[int, Message]]:
        out, data = [], self.body
        while data:
            flags, length = struct.unpack(">BI", data[:5])
            out.append((flags, json.loads(data[5 : 5 + length])))
            data = data[5 + length :]
        return out


def translate(exc: BaseException) -> RpcError | None:
    return RpcError("internal", str(exc)) if isinstance(exc, Exception) else None


def run_unary(
    handler: Any, body: bytes, content_type: bytes = b"application/json", **h: bytes
) -> Sent:
    sent = Sent()
    anyio.run(connect.unary, scope(content_type, **h), feeder(body), sent, handler, translate, 1024)
    return sent


async def echo(message: Message) -> Message:
    return {"got": message}


def test_unary_answers_json() -> None:
    sent = run_unary(echo, b'{"a": 1}')
    assert sent.status == 200
    assert sent.headers[b"content-type"] == b"application/json"
    assert json.loads(sent.body) == {"got": {"a": 1}}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", b"application/json", 400, "invalid_argument"),
        (b"[1]", b"application/json", 400, "invalid_argument"),
        (b"{}", b"application/proto", 400, "invalid_argument"),
        (b"{" + b" " * 2000 + b"}", b"application/json", 429, "resource_exhausted"),
    ],
)
def test_unary_refuses_bad_requests(
    body: bytes, content_type: bytes, status: int, code: str
) -> None:
    sent = run_unary(echo, body, content_type)
    assert sent.status == status
    assert json.loads(sent.body)["code"] == code


def test_unary_errors_carry_their_code_and_status() -> None:
    async def missing(message: Message) -> Message:
        raise RpcError("not_found", "no such thing")

    async def broken(message: Message) -> Message:
        raise ValueError("boom")

    sent = run_unary(missing, b"{}")
    assert (sent.status, json.loads(sent.body)) == (
        404,
        {"code": "not_found", "message": "no such thing"},
    )
    sent = run_unary(broken, b"{}")
    assert (sent.status, json.loads(sent.body)["code"]) == (500, "internal")


def test_unary_deadline_from_connect_timeout_ms() -> None:
    async def slow(message: Message) -> Message:
        await anyio.sleep_forever()
        raise AssertionError

    sent = run_unary(slow, b"{}", connect_timeout_ms=b"1")
    assert (sent.status, json.loads(sent.body)["code"]) == (504, "deadline_exceeded")
    sent = run_unary(slow, b"{}", connect_timeout_ms=b"12345678901")
    assert json.loads(sent.body)["code"] == "invalid_argument"


def stream(handler: Any, body: bytes, piece: int = 0, **h: bytes) -> tuple[Sent, RpcError | None]:
    sent = Sent()

    async def go() -> RpcError | None:
        return await connect.server_stream(
            scope(b"application/connect+json", **h),
            feeder(body, piece),
            sent,
            handler,
            translate,
            {"keepalive": {}},
            1024,
        )

    return sent, anyio.run(go)


def test_server_stream_envelopes_and_end_of_stream() -> None:
    async def count(message: Message) -> AsyncIterator[Message]:
        for i in range(message["n"]):
            yield {"i": i}

    sent, error = stream(count, env(b'{"n": 3}'), piece=2)  # the request arrives in bits
    assert error is None
    assert sent.status == 200
    assert sent.headers[b"content-type"] == b"application/connect+json"
    assert sent.frames() == [(0, {"i": 0}), (0, {"i": 1}), (0, {"i": 2}), (2, {})]


def test_server_stream_error_before_and_after_the_first_message() -> None:
    async def refuse(message: Message) -> AsyncIterator[Message]:
        raise RpcError("not_found", "gone")
        yield {}

    sent, error = stream(refuse, env(b"{}"))
    assert error is not None and error.code == "not_found"
    assert sent.status == 404
    assert json.loads(sent.body) == {"code": "not_found", "message": "gone"}

    async def half(message: Message) -> AsyncIterator[Message]:
        yield {"first": True}
        raise RpcError("unavailable", "lost it")

    sent, error = stream(half, env(b"{}"))
    assert sent.status == 200
    assert sent.frames() == [
        (0, {"first": True}),
        (2, {"error": {"code": "unavailable", "message": "lost it"}}),
    ]


def test_server_stream_sends_keepalives_while_quiet() -> None:
    sent_box: list[Sent] = []

    async def quiet(message: Message) -> AsyncIterator[Message]:
        yield {"start": {}}
        await sent_box[0].keepalive_seen.wait()  # ends only once a keepalive went out
        yield {"done": True}

    sent = Sent()
    sent_box.append(sent)

    async def go() -> RpcError | None:
        return await connect.server_stream(
            scope(b"application/connect+json", keepalive_ping_interval=b"1"),
            feeder(env(b"{}")),
            sent,
            quiet,
            translate,
            {"keepalive": {}},
            1024,
        )

    assert anyio.run(go) is None
    frames = sent.frames()
    assert frames[0] == (0, {"start": {}})
    assert (0, {"keepalive": {}}) in frames
    assert frames[-2:] == [(0, {"done": True}), (2, {})]


def test_server_stream_deadline_ends_the_stream() -> None:
    async def forever(message: Message) -> AsyncIterator[Message]:
        yield {"start": {}}
        await anyio.sleep_forever()

    sent, error = stream(forever, env(b"{}"), connect_timeout_ms=b"50")
    assert error is not None and error.code == "deadline_exceeded"
    assert sent.frames()[-1][0] == 2
    assert sent.frames()[-1][1]["error"]["code"] == "deadline_exceeded"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (env(b"{}", flags=1), "unimplemented"),  # compressed
        (env(b"{}") + env(b"{}"), "invalid_argument"),  # two messages
        (env(b"{}")[:-1], "invalid_argument"),  # cut short
        (b"", "invalid_argument"),  # none
        (env(b"x" * 2000), "resource_exhausted"),
    ],
)
def test_server_stream_refuses_bad_envelopes(body: bytes, code: str) -> None:
    async def never(message: Message) -> AsyncIterator[Message]:
        yield {}

    sent, error = stream(never, body)
    assert error is not None and error.code == code
    assert json.loads(sent.body)["code"] == code


def test_client_stream_collects_messages_split_anywhere() -> None:
    got: list[Message] = []

    async def collect(messages: AsyncIterator[Message]) -> Message:
        async for message in messages:
            got.append(message)
        return {"n": len(got)}

    body = env(b'{"a":1}') + env(b'{"b":2}') + env(b"{}", flags=2)
    sent = Sent()
    anyio.run(
        connect.client_stream,
        scope(b"application/connect+json"),
        feeder(body, piece=3),
        sent,
        collect,
        translate,
        1024,
    )
    assert got == [{"a": 1}, {"b": 2}]
    assert sent.frames() == [(0, {"n": 2}), (2, {})]


def test_proto_json_requests() -> None:
    start = parse(
        process.StartRequest,
        {"process": {"cmd": "/bin/bash", "args": ["-c", "x"], "envs": {"A": "1"}}, "tag": "t"},
    )
    assert (start.process.cmd, start.process.args, start.tag) == ("/bin/bash", ["-c", "x"], "t")
    signal = parse(process.SignalRequest, {"process": {"pid": 5}, "signal": "SIGNAL_SIGKILL"})
    assert signal.process.pid == 5
    with pytest.raises(RpcError) as caught:
        parse(process.StartRequest, {"process": {"cmd": 5}})
    assert caught.value.code == "invalid_argument"
    assert unb64("aGk") == unb64("aGk=") == b"hi"
    with pytest.raises(RpcError):
        unb64("not base64!")


def test_multipart_reader_streams_parts_split_anywhere() -> None:
    boundary = b"XyZ"
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="/tmp/a b.txt"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
        b"first\r\n--Xy not yet\r\n"
        b"\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="two"\r\n\r\n'
        b"\r\n--XyZ--\r\n"
    )

    async def read(piece: int) -> list[tuple[str | None, bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), piece):
                yield body[i : i + piece]

        reader = multipart.MultipartReader(chunks(), boundary)
        out = []
        while (part := await reader.next_part()) is not None:
            out.append((part.filename, b"".join([c async for c in reader.body()])))
        return out

    for piece in (1, 2, 7, len(body)):
        assert anyio.run(read, piece) == [
            ("/tmp/a b.txt", b"first\r\n--Xy not yet\r\n"),
            ("two", b""),
        ]
    assert multipart.boundary_of('multipart/form-data; boundary="XyZ"') == b"XyZ"
    with pytest.raises(InvalidInputError):
        multipart.boundary_of("multipart/form-data")


def test_server_stream_ends_when_the_client_goes_away() -> None:
    closed = anyio.Event()

    async def forever(message: Message) -> AsyncIterator[Message]:
        try:
            yield {"start": {}}
            await anyio.sleep_forever()
        finally:
            closed.set()

    sent = Sent()
    pieces = [env(b"{}")]

    async def receive() -> dict[str, Any]:
        if pieces:
            return {"type": "http.request", "body": pieces.pop(), "more_body": False}
        await sent.started.wait()
        return {"type": "http.disconnect"}

    sent.started = anyio.Event()  # type: ignore[attr-defined]
    original = sent.__call__

    async def sending(message: dict[str, Any]) -> None:
        await original(message)
        if message.get("body", b"").startswith(env(b'{"start":{}}')):
            sent.started.set()  # type: ignore[attr-defined]

    async def go() -> RpcError | None:
        return await connect.server_stream(
            scope(b"application/connect+json"),
            receive,
            sending,
            forever,
            translate,
            {"keepalive": {}},
            1024,
        )

    error = anyio.run(go)
    assert error is not None and error.code == "canceled"
    assert closed.is_set()  # the handler was closed (its agent stream with it)
    assert sent.frames() == [(0, {"start": {}})]  # no end-of-stream to nobody
