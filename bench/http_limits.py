"""The hot-path cost of the HTTP limits protocol (``api/http_server.py``).

Usage: .venv/bin/python bench/http_limits.py [--seconds 5] [--rounds 3]   (no root, no sandboxes)

Serves the same app with uvicorn three ways, one process each: ``httptools`` (uvicorn's stock
protocol, the baseline), ``limited`` (the server's protocol, as ``voidrun-server serve`` runs
it) and ``h11`` (uvicorn's pure-Python protocol with ``h11_max_incomplete_event_size``, the
other way to get a head-size limit). A raw-socket keep-alive client (cheaper than httpx, so the
server is what is measured) calls ``GET /api/version`` with 1 connection (latency) and 16
connections (throughput). Variants alternate round by round so background load hits all alike.
Then 2000 idle connections are opened to the ``limited`` server to show memory per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

VARIANTS = ("httptools", "limited", "h11")
REQUEST = b"GET /api/version HTTP/1.1\r\nHost: bench\r\n\r\n"
HEAD_LIMIT = 64 * 1024


def serve(variant: str, port: int, data_dir: str) -> None:
    """Child process: the app under one protocol variant."""
    import uvicorn

    from voidrun_server.api import http_server
    from voidrun_server.api.app import create_app
    from voidrun_server.config import Settings

    settings = Settings(data_dir=Path(data_dir), port=port, log_level="warning")
    limits = http_server.HttpLimits(HEAD_LIMIT, 10.0, 10000)
    http: type[asyncio.Protocol] | str = (
        http_server.limited_protocol(limits) if variant == "limited" else variant
    )
    uvicorn.run(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        http=http,
        h11_max_incomplete_event_size=HEAD_LIMIT,
        access_log=False,
    )


def start(variant: str, data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOIDRUN_")}
    argv = [sys.executable, __file__, "--serve", variant, str(port), str(data_dir)]
    # stderr too: without root the app logs that sandboxes are unavailable, which is fine here
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health").status_code == 200:
                return proc, port
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{variant} server did not start")


async def load(port: int, connections: int, seconds: float) -> list[float]:
    """Keep-alive GETs on ``connections`` sockets for ``seconds``; latencies in ms."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (started := time.perf_counter()) < deadline:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            latencies.append((time.perf_counter() - started) * 1000)
        writer.close()

    await asyncio.gather(*(one() for _ in range(connections)))
    return latencies


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (less disturbed by other load than latency)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _NullTransport(asyncio.Transport):
    """Enough of a transport for a protocol fed in-process: writes are dropped."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _hello(scope: Any, receive: Any, send: Any) -> None:
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


async def protocol_only(variant: str, requests: int) -> float:
    """Microseconds per keep-alive request through the protocol alone (trivial app, no socket)."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from voidrun_server.api import http_server

    config = uvicorn.Config(_hello, log_level="warning", access_log=False)
    limits = http_server.HttpLimits(HEAD_LIMIT, 10.0, 10000)
    cls = http_server.limited_protocol(limits) if variant == "limited" else HttpToolsProtocol
    protocol = cls(config=config, server_state=ServerState(), app_state={})
    protocol.connection_made(_NullTransport())
    started = time.process_time()  # CPU time: other load on the machine does not count
    for _ in range(requests):
        protocol.data_received(REQUEST)
        await asyncio.sleep(0)  # the request's task runs and responds
        await asyncio.sleep(0)
    elapsed = time.process_time() - started
    protocol.connection_lost(None)
    return elapsed / requests * 1e6


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def idle_memory(pid: int, port: int, count: int) -> float:
    """KiB of server RSS per idle connection (connected, nothing sent)."""
    before = rss(pid)
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    time.sleep(1.0)
    after = rss(pid)
    for s in sockets:
        s.close()
    return (after - before) / count / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", nargs=3, metavar=("VARIANT", "PORT", "DATA_DIR"))
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), args.serve[2])
        return
    import uvloop

    root = Path(tempfile.mkdtemp(prefix="voidrun-bench-http-"))
    servers = {v: start(v, root / v) for v in VARIANTS}
    samples: dict[tuple[str, int], list[float]] = defaultdict(list)
    cpu: dict[tuple[str, int], float] = defaultdict(float)
    try:
        for _proc, port in servers.values():  # warm-up
            uvloop.run(load(port, 4, 1.0))
        for _ in range(args.rounds):
            for connections in (1, 16):
                for variant, (proc, port) in servers.items():
                    used = cpu_seconds(proc.pid)
                    got = uvloop.run(load(port, connections, args.seconds))
                    cpu[variant, connections] += cpu_seconds(proc.pid) - used
                    samples[variant, connections].extend(got)
        proc, port = servers["limited"]
        per_connection = idle_memory(proc.pid, port, 2000)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)

    total = args.seconds * args.rounds
    print(f"GET /api/version, {args.rounds} rounds x {args.seconds:g} s per cell")
    print(
        f"{'protocol':<12} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>10}"
    )
    for (variant, connections), times in sorted(samples.items(), key=lambda i: (i[0][1], i[0][0])):
        ordered = sorted(times)
        p50 = ordered[len(ordered) // 2]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        rate = len(times) / total
        per_request = cpu[variant, connections] / len(times) * 1e6
        print(
            f"{variant:<12} {connections:>5} {rate:9.0f} {p50:8.3f} {p99:8.3f} {per_request:10.0f}"
        )
    print(f"limited: {per_connection:.1f} KiB of server RSS per idle connection (2000 open)")
    print("protocol alone (in-process, trivial app, 20000 requests x 5, median of the five):")
    for variant in ("httptools", "limited") * 2:
        runs = sorted(uvloop.run(protocol_only(variant, 20000)) for _ in range(5))
        print(f"  {variant:<10} {runs[2]:6.2f} us/request")


if __name__ == "__main__":
    main()
