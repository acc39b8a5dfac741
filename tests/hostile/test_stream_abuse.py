"""Output without newlines, streamed as fast as a sandbox can make it, slows nobody down and
cannot grow the server's memory (issue: a partial line was kept whole and copied per chunk)."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.memory import reset_peak_rss, vm_kib
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = pytest.mark.sandbox
ZEROS = {"command": "cat /dev/zero", "timeout": 60}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server() as proc:
        yield proc


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
