"""Mixed load: N concurrent clients, each looping create → exec → upload → download → delete.

Usage: .venv/bin/python bench/load.py [--clients 32] [--seconds 60]   (root)

Reports per-operation throughput and p50/p99 latency and the error count (must be 0), beside a
baseline of the same number of clients calling the unauthenticated ``/api/version``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import defaultdict

from _harness import Server, percentiles, server

PAYLOAD = os.urandom(256 * 1024)


async def run(srv: Server, clients: int, seconds: float) -> tuple[dict[str, list[float]], int]:
    samples: dict[str, list[float]] = defaultdict(list)
    errors = 0
    deadline = time.monotonic() + seconds
    async with srv.async_client(clients * 2) as ac:

        async def timed(op: str, method: str, url: str, **kw: object) -> object:
            nonlocal errors
            started = time.perf_counter()
            response = await ac.request(method, url, **kw)  # type: ignore[arg-type]
            samples[op].append((time.perf_counter() - started) * 1000)
            if response.status_code >= 400:
                errors += 1
                return None
            return response

        async def worker(n: int) -> None:
            nonlocal errors
            i = 0
            while time.monotonic() < deadline:
                i += 1
                created = await timed("create", "POST", "/sandboxes", json={"name": f"l-{n}-{i}"})
                if created is None:
                    continue
                sid = created.json()["data"]["id"]  # type: ignore[attr-defined]
                await timed("exec", "POST", f"/sandboxes/{sid}/exec", json={"command": "echo hi"})
                url = f"/sandboxes/{sid}/files/upload"
                await timed(
                    "upload 256K", "POST", url, params={"path": "/root/blob"}, content=PAYLOAD
                )
                got = await timed(
                    "download 256K", "GET", f"/sandboxes/{sid}/files/download",
                    params={"path": "/root/blob"},
                )  # fmt: skip
                if got is not None and got.content != PAYLOAD:  # type: ignore[attr-defined]
                    errors += 1
                await timed("delete", "DELETE", f"/sandboxes/{sid}")

        await asyncio.gather(*(worker(n) for n in range(clients)))
    return samples, errors


async def baseline(srv: Server, clients: int, seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + seconds
    async with srv.async_client(clients) as ac:

        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                (await ac.get("/version")).raise_for_status()
                times.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(worker() for _ in range(clients)))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    with server(VOIDRUN_SANDBOX_DISK_MB="256") as srv:
        base = asyncio.run(baseline(srv, args.clients, min(args.seconds, 10)))
        samples, errors = asyncio.run(run(srv, args.clients, args.seconds))
    print(f"{args.clients} clients, {args.seconds:.0f} s")
    print(f"{'operation':<24} {'count':>7} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    base_p50, _, base_p99 = percentiles(base)
    rate = len(base) / min(args.seconds, 10)
    print(
        f"{'baseline GET /version':<24} {len(base):7d} {rate:8.1f} {base_p50:8.1f} {base_p99:8.1f}"
    )
    for op, times in samples.items():
        p50, _, p99 = percentiles(times)
        print(f"{op:<24} {len(times):7d} {len(times) / args.seconds:8.1f} {p50:8.1f} {p99:8.1f}")
    print(f"errors: {errors}")


if __name__ == "__main__":
    main()
