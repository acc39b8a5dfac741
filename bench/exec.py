"""Exec round trip through the HTTP API, beside fork+exec of /bin/true, and throughput.

Usage: .venv/bin/python bench/exec.py [-n 500] [--seconds 5]   (root; needs ``wrk``)

1. Latency: N sequential ``POST /exec {"command":"true"}`` on one sandbox (an httpx client),
   p50/p95/p99, next to ``subprocess.run(["/bin/true"])`` and ``bash -c true`` measured in the
   same run (the agent runs commands through bash, so that is the floor the API adds to).
2. Throughput: execs per second with 1, 8 and 32 concurrent connections for a fixed time each,
   driven by ``wrk`` (a Python client at 32 connections is itself the bottleneck on 2 cores),
   every answer checked (status 200 and ``"exitCode":0``, else counted as an error), with the
   server process's CPU time per exec (user + system: less disturbed by other load).
"""

from __future__ import annotations

import argparse
import time

from _harness import cpu_seconds, row, server, time_runs
from _wrk import Result, require
from _wrk import run as wrk


def throughput(api: str, key: str, pid: int, sandbox: str, clients: int, seconds: float) -> Result:
    return wrk(
        f"{api}/sandboxes/{sandbox}/exec",
        connections=clients,
        seconds=seconds,
        pid=pid,
        method="POST",
        body='{"command":"true"}',
        headers={"Content-Type": "application/json", "X-API-Key": key},
        expect='"exitCode":0',
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    require()  # before anything is started: say so at once if wrk is missing
    with server() as srv, srv.client() as client:
        response = client.post("/sandboxes", json={"name": "bench-exec", "autoSleep": False})
        response.raise_for_status()
        sid = response.json()["data"]["id"]
        for _ in range(20):  # warm-up
            client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}).raise_for_status()
        api = []
        cpu_before = cpu_seconds(srv.pid)
        for _ in range(args.n):
            started = time.perf_counter()
            client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}).raise_for_status()
            api.append((time.perf_counter() - started) * 1000)
        sequential_cpu = (cpu_seconds(srv.pid) - cpu_before) / args.n * 1e6
        rates = [
            (n, throughput(srv.api, srv.key, srv.pid, sid, n, args.seconds)) for n in (1, 8, 32)
        ]
    print(f"{'latency (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}")
    print(row("baseline: fork+exec /bin/true (subprocess.run)", time_runs(["/bin/true"], args.n)))
    print(row("baseline: bash -c true (subprocess.run)", time_runs(["bash", "-c", "true"], args.n)))
    print(row("POST /api/sandboxes/{id}/exec  true", api))
    print(f"server CPU per sequential exec: {sequential_cpu:.0f} us")
    print()
    print(
        f"{'throughput (wrk)':<20} {'execs/s':>10} {'errors':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server CPU us/exec':>19}"
    )
    for clients, got in rates:
        print(
            f"{clients:>3} connections      {got.rate:10.1f} {got.errors:8d} {got.p50_ms:8.2f} "
            f"{got.p99_ms:8.2f} {got.cpu_us_per_request:19.0f}"
        )


if __name__ == "__main__":
    main()
