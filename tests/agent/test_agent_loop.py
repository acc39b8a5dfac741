"""The agent's own event loop (``agent.loop``, ``futures``, ``tasks``, ``sync``, ``fdio``,
``threads``), driven in-process by ``tasks.run`` the way the agent runs it."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from voidrun_server.agent.connection import Connection
from voidrun_server.agent.fdio import Fd, Reader, WriteBuffer
from voidrun_server.agent.futures import CancelledError, Future, InvalidStateError, shield
from voidrun_server.agent.loop import get_loop
from voidrun_server.agent.protocol import parse_header, parse_prefix
from voidrun_server.agent.sync import Event
from voidrun_server.agent.tasks import Task, run, sleep, wait
from voidrun_server.agent.threads import run_in_thread


def on_loop(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return run(scenario())


def test_run_returns_the_result_and_closes_the_loop() -> None:
    async def answer() -> int:
        await sleep(0)
        return 42

    assert run(answer()) == 42
    with pytest.raises(RuntimeError, match="no agent loop"):
        get_loop()


def test_futures_resolve_once_and_callbacks_run_from_the_loop() -> None:
    async def scenario() -> None:
        fut: Future[int] = Future()
        seen: list[int] = []
        fut.add_done_callback(lambda f: seen.append(f.result()))
        fut.set_result(1)
        assert seen == []  # not inside set_result
        with pytest.raises(InvalidStateError):
            fut.set_result(2)
        assert await fut == 1
        await sleep(0)
        assert seen == [1]
        failed: Future[int] = Future()
        failed.set_exception(ValueError("boom"))
        with pytest.raises(ValueError, match="boom"):
            await failed
        gone: Future[int] = Future()
        assert gone.cancel() and not gone.cancel()
        with pytest.raises(CancelledError):
            await gone

    on_loop(scenario)


def test_cancel_throws_into_the_coroutine_which_may_clean_up() -> None:
    events: list[str] = []

    async def worker() -> str:
        try:
            await Future()  # never resolves
        except CancelledError:
            events.append("cancelled")
            await sleep(0.001)  # cleanup may await
            events.append("cleaned up")
            raise
        return "unreachable"

    async def scenario() -> None:
        task = Task(worker())
        await sleep(0)
        assert task.cancel()
        await wait([task])
        assert task.cancelled()
        assert not task.cancel()  # already done

    on_loop(scenario)
    assert events == ["cancelled", "cleaned up"]


def test_a_task_cancelled_before_it_starts_never_runs() -> None:
    ran: list[bool] = []

    async def body() -> None:
        ran.append(True)

    async def scenario() -> None:
        task = Task(body())
        task.cancel()
        await wait([task])
        assert task.cancelled()

    on_loop(scenario)
    assert ran == []


def test_wait_first_exception_and_limit() -> None:
    async def fail_soon() -> None:
        await sleep(0.01)
        raise ValueError("first")

    async def scenario() -> None:
        slow = Task(sleep(10))
        failing = Task(fail_soon())
        done, pending = await wait([slow, failing], first_exception=True)
        assert done == {failing} and pending == {slow}
        started = time.monotonic()
        done, pending = await wait([slow], limit=0.05)
        assert done == set() and pending == {slow}
        assert time.monotonic() - started >= 0.04
        assert not slow.done()  # a time limit cancels nothing
        slow.cancel()
        done, _ = await wait([slow, failing])
        assert done == {slow, failing}

    on_loop(scenario)


def test_shield_lets_the_inner_future_finish() -> None:
    async def scenario() -> None:
        inner: Future[int] = Future()

        async def waiter() -> int:
            return await shield(inner)

        task = Task(waiter())
        await sleep(0)
        task.cancel()
        await wait([task])
        assert task.cancelled() and not inner.done()
        inner.set_result(7)
        assert await shield(inner) == 7

    on_loop(scenario)


def test_event_wait_with_a_limit() -> None:
    async def scenario() -> None:
        event = Event()
        assert await event.wait(0.01) is False
        assert await event.wait(0) is False

        async def setter() -> None:
            await sleep(0.01)
            event.set()

        Task(setter())
        assert await event.wait(5) is True
        assert await event.wait() is True  # already set

    on_loop(scenario)


def test_timers_fire_in_order_and_cancelled_ones_do_not() -> None:
    fired: list[int] = []

    async def scenario() -> None:
        loop = get_loop()
        timers = [loop.call_later(0.001 * i, fired.append, i) for i in range(300, 0, -1)]
        for timer in timers[::2]:
            timer.cancel()  # enough to compact the heap
        await sleep(0.35)

    on_loop(scenario)
    assert fired == sorted(fired) and len(fired) == 150 and all(i % 2 == 1 for i in fired)


def test_threads_hand_results_and_errors_back() -> None:
    def work(x: int) -> tuple[int, bool]:
        return x * 2, threading.current_thread() is not threading.main_thread()

    def broken() -> None:
        raise OSError(5, "no")

    async def scenario() -> None:
        results = [await run_in_thread(work, i) for i in range(3)]
        assert results == [(0, True), (2, True), (4, True)]
        many = [run_in_thread(time.sleep, 0.01) for _ in range(40)]  # more than the workers
        await wait(many)
        assert all(f.done() and f.exception() is None for f in many)
        with pytest.raises(OSError, match="no"):
            await run_in_thread(broken)

    on_loop(scenario)


def test_signals_run_their_callback_in_the_loop() -> None:
    async def scenario() -> None:
        got = Event()
        get_loop().add_signal_handler(signal.SIGUSR1, got.set)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            assert await got.wait(5)
        finally:
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)

    on_loop(scenario)


def test_fd_reader_and_write_buffer_move_bytes_with_backpressure() -> None:
    async def scenario() -> None:
        read_end, write_end = os.pipe()
        received = bytearray()
        eof = Event()
        reader = Reader(Fd(read_end), received.extend, eof.set)
        writer = WriteBuffer(Fd(write_end, read=False, write=True))
        reader.pause()
        writer.write(b"x" * 200_000)  # more than the pipe holds: the rest stays queued
        await sleep(0.01)
        assert writer.pending and not received
        reader.resume()
        writer.close_when_flushed()
        assert await eof.wait(5)
        assert bytes(received) == b"x" * 200_000 and not writer.pending
        reader.fd.close()

    on_loop(scenario)


def test_read_some_waits_for_data_and_sees_eof() -> None:
    async def scenario() -> None:
        read_end, write_end = os.pipe()
        pipe = Fd(read_end)

        def later() -> None:
            os.write(write_end, b"hello")
            os.close(write_end)

        get_loop().call_later(0.01, later)
        assert await pipe.read_some(100) == b"hello"
        assert await pipe.read_some(100) == b""
        pipe.close()
        with pytest.raises(OSError):
            pipe.read(1)

    on_loop(scenario)


def test_frames_queued_in_one_round_leave_in_one_writev(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write batching: every frame a round produced goes out with a single system call."""
    calls: list[int] = []
    real_writev = os.writev

    def counting_writev(fd: int, buffers: Any) -> int:
        calls.append(len(buffers))
        return real_writev(fd, buffers)

    async def scenario() -> None:
        ours, theirs = socket.socketpair()
        conn = Connection(None, os.dup(ours.fileno()))  # type: ignore[arg-type]  # no ops run
        ours.close()
        monkeypatch.setattr(os, "writev", counting_writev)
        for sid in range(1, 11):
            await conn.send({"t": "res", "id": sid, "body": {}})  # room: nothing waits
        await conn.send({"t": "data", "id": 11, "ch": "stdout"}, b"payload")
        await sleep(0.01)
        assert calls == [12]  # ten frames, then a head and its payload: one writev
        received = theirs.recv(65536)
        frames = []
        while received:
            header_len, payload_len = parse_prefix(received[:8])
            frames.append(parse_header(received[8 : 8 + header_len])["id"])
            received = received[8 + header_len + payload_len :]
        assert frames == list(range(1, 12))
        theirs.close()
        conn._sock.close()

    on_loop(scenario)
