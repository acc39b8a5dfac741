"""The agent connection's framing on both sides (``agentclient/_wire.py``), without an agent:
a recording transport below it. Writes: frames leave whole, in the order posted, joined into
one write per loop iteration up to ``WRITE_BATCH``; a paused transport holds them back (and
``send`` waits). Reads: frames are parsed however the bytes are split, strict checks apply as
soon as a prefix is complete, and the buffer is bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import pytest

from voidrun_server.agent.protocol import PREFIX, encode_frame
from voidrun_server.agentclient import AgentConnectionError, AgentProtocolError, _wire
from voidrun_server.agentclient._wire import WRITE_BATCH, Connection, _Inbound


class RecordingTransport:
    """What ``Connection`` uses of an asyncio transport; writes are recorded."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def connect() -> tuple[Connection, _Inbound, RecordingTransport]:
    transport = RecordingTransport()
    inbound = _Inbound()
    inbound.connection_made(transport)  # type: ignore[arg-type]
    return Connection(transport, inbound, "test.sock"), inbound, transport  # type: ignore[arg-type]


def frames_in(writes: list[bytes]) -> list[tuple[dict[str, Any], bytes]]:
    """Split the written bytes back into frames (and check nothing is left over)."""
    data = b"".join(writes)
    out = []
    while data:
        header_len, payload_len = PREFIX.unpack(data[: PREFIX.size])
        end = PREFIX.size + header_len + payload_len
        out.append(
            (
                json.loads(data[PREFIX.size : PREFIX.size + header_len]),
                data[PREFIX.size + header_len : end],
            )
        )
        data = data[end:]
    return out


async def next_iteration() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


# -- writing ---------------------------------------------------------------------------------


async def test_frames_queued_in_one_iteration_leave_in_one_write_in_order() -> None:
    conn, _, transport = connect()
    for i in range(50):
        conn.post({"t": "window", "id": i + 1, "n": 1})
    assert transport.writes == []  # nothing before the flush at the end of this iteration
    await next_iteration()
    assert len(transport.writes) == 1
    assert [h["id"] for h, _ in frames_in(transport.writes)] == list(range(1, 51))


async def test_concurrent_tasks_share_writes_and_keep_posting_order() -> None:
    conn, _, transport = connect()
    order: list[int] = []

    async def request(i: int) -> None:
        for j in range(3):
            conn.post({"t": "window", "id": i * 10 + j + 1, "n": 1})
            order.append(i * 10 + j + 1)
            await asyncio.sleep(0)

    await asyncio.gather(*(request(i) for i in range(8)))
    await next_iteration()
    assert [h["id"] for h, _ in frames_in(transport.writes)] == order
    assert len(transport.writes) <= 4  # 24 frames from 8 tasks over 3 iterations, not 24 writes


async def test_a_write_never_exceeds_the_batch_bound_and_never_splits_a_frame() -> None:
    conn, _, transport = connect()
    payload = b"x" * (200 * 1024)
    for i in range(12):  # 12 × ~200 KiB: more than two batches
        conn.post({"t": "data", "id": 1, "ch": "stdin", "n": i}, payload)
    await next_iteration()
    assert len(transport.writes) >= 3
    assert all(len(w) <= WRITE_BATCH for w in transport.writes)
    assert [h["n"] for h, p in frames_in(transport.writes) if p == payload] == list(range(12))
    for write in transport.writes:  # each write holds whole frames only
        assert frames_in([write])


async def test_a_paused_transport_holds_frames_and_send_waits() -> None:
    conn, inbound, transport = connect()
    inbound.pause_writing()
    conn.post({"t": "window", "id": 1, "n": 1})
    sent = asyncio.ensure_future(conn.send({"t": "end", "id": 2}))
    await next_iteration()
    assert transport.writes == [] and not sent.done()
    conn.post({"t": "window", "id": 3, "n": 1})  # a later frame never overtakes
    inbound.resume_writing()
    await next_iteration()
    assert sent.done() and sent.exception() is None
    assert [h["id"] for h, _ in frames_in(transport.writes)] == [1, 2, 3]


async def test_send_returns_once_its_frame_is_written() -> None:
    conn, _, transport = connect()
    await conn.send({"t": "end", "id": 7})
    assert [h["id"] for h, _ in frames_in(transport.writes)] == [7]


async def test_failure_wakes_senders_and_drops_what_is_queued() -> None:
    conn, inbound, transport = connect()
    inbound.pause_writing()
    sent = asyncio.ensure_future(conn.send({"t": "end", "id": 1}))
    await next_iteration()
    conn.fail(AgentConnectionError("gone"))
    with pytest.raises(AgentConnectionError, match="gone"):
        await sent
    with pytest.raises(AgentConnectionError, match="gone"):
        conn.post({"t": "end", "id": 2})
    inbound.resume_writing()
    await next_iteration()
    assert transport.writes == []


async def test_a_lost_transport_fails_a_waiting_send() -> None:
    conn, inbound, transport = connect()
    inbound.pause_writing()
    sent = asyncio.ensure_future(conn.send({"t": "end", "id": 1}))
    await next_iteration()
    transport.closing = True
    inbound.connection_lost(None)
    with pytest.raises(AgentConnectionError, match="lost the connection"):
        await sent


# -- reading ---------------------------------------------------------------------------------


def res(sid: int) -> bytes:
    return encode_frame({"t": "res", "id": sid, "body": {"n": sid}})


async def read_all(conn: Connection, count: int) -> list[tuple[dict[str, Any], bytes]]:
    return [await conn._read_frame() for _ in range(count)]


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 100_000])
async def test_frames_parse_however_the_bytes_are_split(chunk: int) -> None:
    conn, inbound, _ = connect()
    data = b"".join(res(i) for i in range(1, 21)) + encode_frame(
        {"t": "data", "id": 21, "ch": "stdout"}, b"payload bytes"
    )

    async def feed() -> None:
        for i in range(0, len(data), chunk):
            inbound.data_received(data[i : i + chunk])
            await asyncio.sleep(0)

    feeder = asyncio.ensure_future(feed())
    got = await read_all(conn, 21)
    await feeder
    assert [h["id"] for h, _ in got] == list(range(1, 22))
    assert got[-1][1] == b"payload bytes" and all(p == b"" for _, p in got[:-1])
    assert inbound.pos == len(inbound.buffer)  # everything parsed (compacted lazily)


async def test_a_bad_prefix_is_refused_before_the_rest_arrives() -> None:
    conn, inbound, _ = connect()
    inbound.data_received(PREFIX.pack(2**31, 0))  # a 2 GiB header announced
    with anyio.fail_after(5), pytest.raises(AgentProtocolError, match="bad header length"):
        await conn._read_frame()


async def test_eof_inside_a_frame_is_a_protocol_error_and_between_frames_an_end() -> None:
    conn, inbound, _ = connect()
    inbound.data_received(res(1) + res(2)[:5])
    inbound.eof_received()
    assert (await conn._read_frame())[0]["id"] == 1  # what arrived whole is still delivered
    with pytest.raises(AgentProtocolError, match="ended inside a frame"):
        await conn._read_frame()
    conn, inbound, _ = connect()
    inbound.data_received(res(1))
    inbound.eof_received()
    await conn._read_frame()
    with pytest.raises(anyio.EndOfStream):
        await conn._read_frame()


async def test_an_unfinished_frame_times_out_unless_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "FRAME_TIMEOUT", 0.05)
    conn, inbound, _ = connect()
    inbound.data_received(res(1)[:10])
    with anyio.fail_after(5), pytest.raises(AgentProtocolError, match="left a frame unfinished"):
        await conn._read_frame()
    conn, inbound, _ = connect()
    conn.freeze(True)
    inbound.data_received(res(1)[:10])
    reading = asyncio.ensure_future(conn._read_frame())
    await asyncio.sleep(0.2)  # four timeouts: a frozen sandbox cannot finish its frame
    assert not reading.done()
    inbound.data_received(res(1)[10:])
    assert (await reading)[0]["id"] == 1


async def test_reading_pauses_when_too_much_is_unparsed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_wire, "READ_LIMIT", 1000)
    conn, inbound, transport = connect()
    for i in range(1, 101):
        inbound.data_received(res(i))
    assert not transport.reading
    got = await read_all(conn, 100)
    assert [h["id"] for h, _ in got] == list(range(1, 101))
    reading = asyncio.ensure_future(conn._read_frame())  # needs more: reading resumes
    await next_iteration()
    assert transport.reading
    inbound.data_received(res(101))
    assert (await reading)[0]["id"] == 101
