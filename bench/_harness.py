"""What every benchmark needs: a throwaway server with real sandboxes, and percentiles."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from voidrun_server.images.build import build_code_image
from voidrun_server.services.images import SYSTEM_IMAGES

IMAGES = Path(os.environ.get("VOIDRUN_TEST_IMAGES_DIR", "/var/tmp/voidrun-test-images"))


@dataclass(frozen=True)
class Server:
    api: str
    key: str
    pid: int = 0  # the server process (for its CPU time: ``cpu_seconds``)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"X-API-Key": self.key}, timeout=120)

    def async_client(self, connections: int = 100) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.api, headers={"X-API-Key": self.key}, timeout=120, limits=limits
        )


def time_runs(argv: list[str], n: int) -> list[float]:
    """Milliseconds of ``n`` runs of ``argv`` (``subprocess.run``): a floor for the same run."""
    times = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        times.append((time.perf_counter() - started) * 1000)
    return times


def percentiles(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return statistics.median(ordered), pick(0.95), pick(0.99)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (less disturbed by other load than
    latency is)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def row(label: str, samples: list[float]) -> str:
    p50, p95, p99 = percentiles(samples)
    return f"{label:<52} {p50:8.2f} {p95:8.2f} {p99:8.2f}"


@contextmanager
def server(**env: str) -> Iterator[Server]:
    """A ``voidrun-server serve`` on a free port with its own data dir (removed afterwards)."""
    build_code_image(IMAGES, tag=SYSTEM_IMAGES["code"])
    data_dir = Path(tempfile.mkdtemp(prefix="voidrun-bench-", dir="/var/tmp"))
    os.chmod(data_dir, 0o755)
    key = "vr_bench_" + secrets.token_urlsafe(32)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    environment = {
        **os.environ,
        "VOIDRUN_DATA_DIR": str(data_dir),
        "VOIDRUN_PORT": str(port),
        "VOIDRUN_BOOTSTRAP_API_KEY": key,
        "VOIDRUN_IMAGES_DIR": str(IMAGES),
        "VOIDRUN_SANDBOX_DISK_MB": "1024",
        "VOIDRUN_LOG_LEVEL": "warning",
        # namespace sandboxes only unless a bench asks: the others' background start (a
        # platform probe, a guest kernel) would load the machine while it measures
        "VOIDRUN_ISOLATIONS": '["namespace"]',
        # One org creates everything here: lift its quotas (the defaults stop at 64 CPUs).
        "VOIDRUN_ORG_MAX_SANDBOXES": "100000",
        "VOIDRUN_ORG_MAX_CPU": "100000",
        "VOIDRUN_ORG_MAX_MEM_MB": str(1 << 40),
        "VOIDRUN_ORG_MAX_DISK_MB": str(1 << 40),
        **env,
    }
    binary = Path(sys.executable).with_name("voidrun-server")
    proc = subprocess.Popen([str(binary), "serve"], env=environment, stdout=subprocess.DEVNULL)
    api = f"http://127.0.0.1:{port}/api"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{api}/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError("server did not start")
        yield Server(api=api, key=key, pid=proc.pid)
    finally:
        # Sandboxes outlive the server by design: delete them before removing the data dir.
        with Server(api=api, key=key).client() as client:
            listed = client.get("/sandboxes", params={"limit": 100})
            for box in listed.json().get("data", []) if listed.status_code == 200 else []:
                client.delete(f"/sandboxes/{box['id']}")
        proc.terminate()
        proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
