"""Output without newlines, streamed as fast as a sandbox can make it, slows nobody down and
cannot grow the server's memory (issue: a partial line was kept whole and copied per chunk)."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from tests.support.memory import reset_peak_rss, vm_kib
from tests.support.sandboxes import (
    create_sandbox,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = pytest.mark.sandbox
ZEROS = {"command": "cat /dev/zero", "timeout": 60}


def version_latencies(server: ServerProcess, count: int) -> list[float]:
    times = []
    with httpx.Client(base_url=server.api, timeout=30) as anonymous:
        for _ in range(count):
            started = time.perf_counter()
            assert anonymous.get("/version").status_code == 200
            times.append(time.perf_counter() - started)
    return times


def test_a_stream_of_zeros_does_not_stall_the_server(server: ServerProcess) -> None:
    with server.client() as client:
        box = create_sandbox(client)["id"]
        baseline = version_latencies(server, 40)
        received = 0
        events = 0
        stop = threading.Event()
        streaming = threading.Event()

        def follow() -> None:
            nonlocal received, events
            url = f"/sandboxes/{box}/exec-stream"
            with client.stream("POST", url, json=ZEROS) as response:
                assert response.status_code == 200
                for chunk in response.iter_bytes():
                    received += len(chunk)
                    events += chunk.count(b"event: stdout\n")
                    if received > 1 << 20:
                        streaming.set()
                    if stop.is_set():
                        return

        reader = threading.Thread(target=follow)
        reader.start()
        try:
            assert streaming.wait(30), "no output arrived"
            during = version_latencies(server, 40)
        finally:
            stop.set()
            reader.join(30)
        assert received > 1 << 20 and events > 4  # lines without newlines still stream
        assert statistics.median(during) <= 10 * statistics.median(baseline) + 0.01, (
            statistics.median(baseline),
            statistics.median(during),
        )


def test_a_client_that_stops_reading_cannot_grow_server_memory(server: ServerProcess) -> None:
    assert server.process is not None
    with server.client() as client:
        box = create_sandbox(client)["id"]
        before = reset_peak_rss(server.process.pid)
        url = f"/sandboxes/{box}/exec-stream"
        with client.stream("POST", url, json=ZEROS) as response:
            assert response.status_code == 200
            next(response.iter_bytes())  # started; now read nothing for a while
            time.sleep(3)
            grown = vm_kib(server.process.pid, "VmHWM") - before
        assert grown < 64 * 1024, f"server grew by {grown} KiB while the client did not read"


def test_a_client_that_hangs_up_does_not_leave_its_command_running(
    server: ServerProcess,
) -> None:
    """The exec-stream route holds the agent stream on its ``StreamOwner`` (``api/streams.py``),
    which releases it however the response ends, also before its first byte: hanging up kills
    the command at once, not when its timeout comes minutes later."""
    with server.client() as client:
        box = create_sandbox(client)["id"]

        def running() -> bool:
            ps = client.post(f"/sandboxes/{box}/exec", json={"command": "ps -eo args"})
            return "sleep 97531" in ps.json()["data"]["stdout"]

        body = json.dumps({"command": "sleep 97531", "timeout": 300}).encode()
        head = (
            f"POST /api/sandboxes/{box}/exec-stream HTTP/1.1\r\nHost: x\r\n"
            f"X-API-Key: {server.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(head + body)
            wait_until(running, "the command to start")
        wait_until(lambda: not running(), "the command to be killed")


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)
