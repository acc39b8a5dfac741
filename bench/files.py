"""File upload and download throughput through the API, beside a local copy of the same bytes.

Usage: .venv/bin/python bench/files.py [--repeat 3]   (root)

For 1 MB and 200 MB files: ``POST …/files/upload`` (raw body, streamed) and
``GET …/files/download`` (streamed), MB/s as the best and median of ``--repeat`` runs, next to
``cp`` of the same file on the host's disk measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from _harness import server

MB = 1_000_000
CHUNK = 1024 * 1024


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            yield block


def rate(size: int, seconds: list[float]) -> str:
    speeds = [size / MB / s for s in seconds]
    return f"{max(speeds):8.1f} {statistics.median(speeds):8.1f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="voidrun-files-bench-", dir="/var/tmp"))
    rows = []
    try:
        with server(VOIDRUN_SANDBOX_DISK_MB="2048") as srv, srv.client() as client:
            sid = client.post("/sandboxes", json={"name": "bench-files", "autoSleep": False})
            sid.raise_for_status()
            box = sid.json()["data"]["id"]
            for size in (1 * MB, 200 * MB):
                source = work / f"src-{size}"
                source.write_bytes(os.urandom(size))
                digest = hashlib.sha256(source.read_bytes()).hexdigest()
                copies, ups, downs = [], [], []
                for i in range(args.repeat):
                    started = time.perf_counter()
                    subprocess.run(["cp", str(source), str(work / f"copy-{i}")], check=True)
                    copies.append(time.perf_counter() - started)
                    (work / f"copy-{i}").unlink()

                    started = time.perf_counter()
                    client.post(
                        f"/sandboxes/{box}/files/upload",
                        params={"path": "/root/blob"},
                        content=chunks(source),
                        headers={"Content-Type": "application/octet-stream"},
                    ).raise_for_status()
                    ups.append(time.perf_counter() - started)

                    started = time.perf_counter()
                    hasher = hashlib.sha256()
                    with client.stream(
                        "GET", f"/sandboxes/{box}/files/download", params={"path": "/root/blob"}
                    ) as response:
                        response.raise_for_status()
                        for block in response.iter_bytes(CHUNK):
                            hasher.update(block)
                    downs.append(time.perf_counter() - started)
                    assert hasher.hexdigest() == digest, "download differs from upload"
                label = f"{size // MB} MB"
                rows.append((f"baseline: cp on the host, {label}", rate(size, copies)))
                rows.append((f"POST …/files/upload, {label}", rate(size, ups)))
                rows.append((f"GET …/files/download (sha-256 checked), {label}", rate(size, downs)))
            client.delete(f"/sandboxes/{box}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'MB/s':<52} {'best':>8} {'median':>8}   repeat={args.repeat}")
    for label, value in rows:
        print(f"{label:<52} {value}")


if __name__ == "__main__":
    main()
