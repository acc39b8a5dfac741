"""Serving cost: the API's routes under ``wrk``, beside floors measured in the same run.

Usage: .venv/bin/python bench/serve.py [--seconds 5] [--rounds 2]   (root; needs ``wrk``)

Routes (through a real ``voidrun-server serve``, one sandbox):

* ``GET /api/version`` — no authentication, no database: the HTTP + ASGI + FastAPI floor;
* ``GET /api/sandboxes/{id}`` — authenticated (key from the in-memory cache), one database read;
* ``GET /api/sandboxes/{id}/files?path=/tmp`` — authenticated, sandbox from memory, one agent
  round trip (no process inside the sandbox).

Floors, each its own process, same machine, same ``wrk``, same run:

* ``floor: raw uvloop protocol`` — an ``asyncio.Protocol`` on uvloop that answers every
  ``GET`` with the same bytes ``/api/version`` returns (no HTTP parser, no ASGI): what the event
  loop and the sockets cost;
* ``floor: uvicorn + trivial ASGI app`` — uvicorn with the server's own httptools protocol
  (``api/http_server.py``) and an ASGI app that sends those bytes: what uvicorn costs.

Cells alternate round by round so background load hits all alike. ``CPU us/req`` is the
measured process's user + system CPU time divided by the requests ``wrk`` completed (less
disturbed by other load on the machine than latency is). ``errors`` counts wrong statuses or
bodies and socket errors; it must be 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import httpx

from _harness import server
from _wrk import HEADER, Result, line, require
from _wrk import run as wrk
from voidrun_server import __version__

BODY = json.dumps(
    {"version": __version__, "commit": "", "buildTime": ""}, separators=(",", ":")
).encode()


# -- floors --------------------------------------------------------------------------------


class _Fixed(asyncio.Protocol):
    """Answers each complete request head with a fixed response (keep-alive)."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
        % (len(BODY), BODY)
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport  # uvloop's TCPTransport is not an asyncio.Transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        heads = self.buffer.count(b"\r\n\r\n")
        if heads:
            self.buffer = self.buffer.rsplit(b"\r\n\r\n", 1)[1]
            self.transport.write(self.RESPONSE * heads)


def serve_raw(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        srv = await loop.create_server(_Fixed, "127.0.0.1", port)
        await srv.serve_forever()

    uvloop.run(main())


async def _trivial(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": BODY})


def serve_uvicorn(port: int) -> None:
    import uvicorn

    from voidrun_server.api import http_server

    limits = http_server.HttpLimits(64 * 1024, 10.0, 10000)
    uvicorn.run(
        _trivial,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        loop="uvloop",
        http=http_server.limited_protocol(limits),
        access_log=False,
        lifespan="off",
    )


def start_floor(kind: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    argv = [sys.executable, __file__, "--floor", kind, str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/version"
    for _ in range(400):
        try:
            if httpx.get(url).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the {kind} floor did not start")


# -- the run -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--floor", nargs=2, metavar=("KIND", "PORT"))
    args = parser.parse_args()
    if args.floor:
        (serve_raw if args.floor[0] == "raw" else serve_uvicorn)(int(args.floor[1]))
        return
    require()  # before anything is started: say so at once if wrk is missing

    floors = {kind: start_floor(kind) for kind in ("raw", "uvicorn")}
    results: dict[tuple[str, int], list[Result]] = defaultdict(list)
    try:
        with server() as srv, srv.client() as client:
            created = client.post("/sandboxes", json={"name": "bench-serve", "autoSleep": False})
            created.raise_for_status()
            sid = created.json()["data"]["id"]
            client.get(f"/sandboxes/{sid}/files", params={"path": "/tmp"}).raise_for_status()
            base = srv.api.removesuffix("/api")
            key = {"X-API-Key": srv.key}
            # (label, url, pid, headers, expected body text, connection counts)
            cells: list[tuple[str, str, int, dict[str, str], str, tuple[int, ...]]] = [
                ("floor: raw uvloop protocol", floors["raw"][1], floors["raw"][0].pid, {},
                 '"version"', (1, 8, 32)),
                ("floor: uvicorn + trivial ASGI app", floors["uvicorn"][1],
                 floors["uvicorn"][0].pid, {}, '"version"', (1, 8, 32)),
                ("GET /api/version", f"{base}/api/version", srv.pid, {}, '"version"',
                 (1, 8, 32)),
                ("GET /api/sandboxes/{id}", f"{base}/api/sandboxes/{sid}", srv.pid, key,
                 '"success":true', (1, 32)),
                ("GET /api/sandboxes/{id}/files?path=/tmp",
                 f"{base}/api/sandboxes/{sid}/files?path=/tmp", srv.pid, key, '"files"', (1, 32)),
            ]  # fmt: skip
            for _label, url, pid, headers, expect, _ in cells:  # warm-up
                wrk(url, connections=8, seconds=1, pid=pid, headers=headers, expect=expect)
            for _ in range(args.rounds):
                for label, url, pid, headers, expect, counts in cells:
                    for connections in counts:
                        got = wrk(
                            url,
                            connections=connections,
                            seconds=args.seconds,
                            pid=pid,
                            headers=headers,
                            expect=expect,
                        )
                        results[label, connections].append(got)
    finally:
        for proc, _ in floors.values():
            proc.terminate()
            proc.wait()

    print(f"wrk -t1, {args.rounds} rounds x {args.seconds:g} s per cell; load {_load()}")
    print("per cell: summed requests/s over the rounds; the median round's p50 and p99")
    print(HEADER)
    for (label, connections), runs in results.items():
        print(line(label, connections, _combine(runs)))
    print()
    print("ratio to the uvicorn floor (req/s, same connections):")
    for (label, connections), runs in results.items():
        if label.startswith("floor"):
            continue
        floor = _combine(results["floor: uvicorn + trivial ASGI app", connections]).rate
        if floor:
            print(f"  {label:<44} {connections:>3} conns  {_combine(runs).rate / floor:5.2f}")


def _combine(runs: list[Result]) -> Result:
    """All rounds' requests over all rounds' time; latencies from the median round."""
    ordered = sorted(runs, key=lambda r: r.p50_ms)
    mid = ordered[len(ordered) // 2]
    requests = sum(r.requests for r in runs)
    cpu = sum(r.cpu_us_per_request * r.requests for r in runs) / max(requests, 1)
    return Result(
        requests=requests,
        seconds=sum(r.seconds for r in runs),
        p50_ms=mid.p50_ms,
        p90_ms=mid.p90_ms,
        p99_ms=mid.p99_ms,
        errors=sum(r.errors for r in runs),
        cpu_us_per_request=cpu,
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
