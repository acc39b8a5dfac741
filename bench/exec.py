"""Exec round trip through the HTTP API, beside fork+exec of /bin/true, and throughput.

Usage: .venv/bin/python bench/exec.py [-n 500] [--seconds 5]   (root)

1. Latency: N sequential ``POST /exec {"command":"true"}`` on one sandbox, p50/p95/p99, next to
   ``subprocess.run(["/bin/true"])`` and ``bash -c true`` measured in the same run (the agent runs
   commands through bash, so that is the floor the API adds to).
2. Throughput: execs per second with 1, 8 and 32 concurrent clients for a fixed time each.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time

from _harness import Server, row, server


def local(argv: list[str], n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


async def throughput(srv: Server, sandbox: str, clients: int, seconds: float) -> tuple[float, int]:
    done = errors = 0
    deadline = time.monotonic() + seconds
    async with srv.async_client(clients) as ac:

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < deadline:
                r = await ac.post(f"/sandboxes/{sandbox}/exec", json={"command": "true"})
                if r.status_code == 200 and r.json()["data"]["exitCode"] == 0:
                    done += 1
                else:
                    errors += 1

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.monotonic() - started), errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with server() as srv, srv.client() as client:
        response = client.post("/sandboxes", json={"name": "bench-exec", "autoSleep": False})
        response.raise_for_status()
        sid = response.json()["data"]["id"]
        for _ in range(20):  # warm-up
            client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}).raise_for_status()
        api = []
        for _ in range(args.n):
            started = time.perf_counter()
            client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}).raise_for_status()
            api.append((time.perf_counter() - started) * 1000)
        rates = [(n, *asyncio.run(throughput(srv, sid, n, args.seconds))) for n in (1, 8, 32)]
    print(f"{'latency (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}")
    print(row("baseline: fork+exec /bin/true (subprocess.run)", local(["/bin/true"], args.n)))
    print(row("baseline: bash -c true (subprocess.run)", local(["bash", "-c", "true"], args.n)))
    print(row("POST /api/sandboxes/{id}/exec  true", api))
    print()
    print(f"{'throughput':<20} {'execs/s':>10} {'errors':>8}")
    for clients, rate, errors in rates:
        print(f"{clients:>3} clients          {rate:10.1f} {errors:8d}")


if __name__ == "__main__":
    main()
