"""A command's round trip through the E2B SDK (``/e2b``, Connect RPC) beside the VoidRun exec
route on the same server and sandbox, and the floors measured in the same run.

Usage: .venv/bin/python bench/e2b_sdk.py [-n 300]   (root; the ``e2b`` SDK from the test extra)

1. ``POST /api/sandboxes/{id}/exec {"command":"true"}`` (httpx, one client): the VoidRun API.
2. ``sandbox.commands.run("true")`` through the E2B SDK: Start (a server stream: start, end
   events) on a background command followed to its exit.
3. ``sandbox.files.write`` + ``read`` of 4 KiB and ``files.list("/tmp")`` through the SDK.
Floors: fork+exec of /bin/true and ``bash -l -c true`` (what the SDK's command runs).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from _harness import row, server, time_runs


def timed(n: int, work: Callable[[], object]) -> list[float]:
    for _ in range(min(20, n)):  # warm-up
        work()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        work()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    with server() as srv, srv.client() as client:
        base = srv.api.removesuffix("/api")
        os.environ.update(
            E2B_API_URL=f"{base}/e2b", E2B_SANDBOX_URL=f"{base}/e2b", E2B_API_KEY=srv.key
        )
        from e2b import Sandbox

        box = Sandbox.create()
        sid = box.sandbox_id

        def voidrun_exec() -> None:
            client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}).raise_for_status()

        payload = b"x" * 4096

        def write_read() -> None:
            box.files.write("/tmp/bench.bin", payload)
            assert box.files.read("/tmp/bench.bin", format="bytes") == payload

        api = timed(args.n, voidrun_exec)
        e2b = timed(args.n, lambda: box.commands.run("true"))
        files = timed(args.n, write_read)
        listing = timed(args.n, lambda: box.files.list("/tmp"))
        box.kill()
    print(f"{'latency (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}")
    print(row("baseline: fork+exec /bin/true (subprocess.run)", time_runs(["/bin/true"], args.n)))
    print(
        row(
            "baseline: bash -l -c true (subprocess.run)",
            time_runs(["bash", "-l", "-c", "true"], args.n),
        )
    )
    print(row("VoidRun API: POST /exec true", api))
    print(row("E2B SDK: commands.run('true')", e2b))
    print(row("E2B SDK: files.write + files.read 4 KiB", files))
    print(row("E2B SDK: files.list('/tmp')", listing))


if __name__ == "__main__":
    main()
