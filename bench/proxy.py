"""The preview proxy's cost: the same requests through the proxy and straight into the sandbox.

Usage: .venv/bin/python bench/proxy.py [--requests 2000] [--mb 200] [--repeat 3]
       [--via setns|agent|both]   (root)

One sandbox runs ``tests/api/proxy_apps/upstream.py`` (HTTP/1.1 keep-alive) on 8001 and
``python3 -m http.server`` on 8000. Both paths use the same client (httpcore, sync, one
keep-alive connection):

* **proxied**: ``GET /api/sandboxes/{id}/ports/…`` on the server (API key auth, wake check,
  httpcore pool into the sandbox, relay);
* **direct**: the same request on a socket this process opens inside the sandbox's network
  namespace (``setns`` to its first process), no proxy and no server in between.

Latency: a small JSON response, the two paths interleaved request by request so both see the
same machine load; p50/p95/p99 in ms. CPU: the server process's user+system time per proxied
request (``/proc/<pid>/stat``), and the bench client's own per request on each path.
Throughput: a ``--mb`` MB file, MB/s best and median of ``--repeat`` downloads per path, and
the server's CPU seconds per proxied GB.

``--via``: how the server reaches the sandbox's port: ``setns`` (the namespace driver's
``PortOpener``), ``agent`` (``VOIDRUN_PROXY_THROUGH_AGENT``: the agent relay that gvisor and
microvm sandboxes use), or ``both`` (one server after the other, each beside its own direct
floor, then the two compared).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import statistics
import time
from pathlib import Path
from typing import Any

import httpcore
from httpcore._backends.sync import SyncStream

from _harness import row, server

CLONE_NEWNET = 0x40000000
APP = Path(__file__).parents[1] / "tests" / "api" / "proxy_apps" / "upstream.py"
MB = 1_000_000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class NetnsBackend(httpcore.NetworkBackend):
    """Connects inside the network namespace of process ``pid`` (the direct path)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)

    def connect_tcp(self, host: str, port: int, *args: Any, **kwargs: Any) -> SyncStream:
        pidfd = os.pidfd_open(self.pid)
        try:
            setns(pidfd)
            try:
                sock = socket.socket()
            finally:
                setns(self.home)
        finally:
            os.close(pidfd)
        sock.connect(("127.0.0.1", port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SyncStream(sock)


def sandbox_init(sandbox_id: str) -> int:
    """Host pid of the sandbox's first process: in its cgroup, pid 1 in its pid namespace."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        nspid = next((ln.split()[1:] for ln in status.splitlines() if ln.startswith("NSpid")), [])
        if sandbox_id in cgroup and len(nspid) > 1 and nspid[-1] == "1":
            return int(entry)
    raise RuntimeError(f"no init process found for sandbox {sandbox_id}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def get(pool: httpcore.ConnectionPool, url: str, headers: dict[str, str]) -> bytes:
    response = pool.request("GET", url, headers=headers)
    assert response.status == 200, (response.status, response.content[:200])
    return response.content


def download(pool: httpcore.ConnectionPool, url: str, headers: dict[str, str]) -> int:
    size = 0
    with pool.stream("GET", url, headers=headers) as response:
        assert response.status == 200, response.status
        for chunk in response.iter_stream():
            size += len(chunk)
    return size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--via", choices=("setns", "agent", "both"), default="setns")
    args = parser.parse_args()
    if args.via != "both":
        run(args.requests, args.mb, args.repeat, via=args.via)
        return
    found = {via: run(args.requests, args.mb, args.repeat, via=via) for via in ("setns", "agent")}
    print("\nsetns vs agent relay (each beside its own direct floor)")
    print(f"{'':<30} {'added p50 ms':>14} {'proxied MB/s':>14} {'of direct':>10}")
    for via, (added, speed, ratio) in found.items():
        print(f"{via:<30} {added:14.2f} {speed:14.1f} {ratio * 100:9.0f}%")


def run(requests: int, mb: int, repeat: int, via: str = "setns") -> tuple[float, float, float]:
    """Measure and print (also ``bench/network.py --part proxy``); returns the p50 added by
    the proxy (ms), the median proxied download speed (MB/s) and its share of direct."""
    args = argparse.Namespace(requests=requests, mb=mb, repeat=repeat)
    env = {"VOIDRUN_SANDBOX_DISK_MB": "2048"}
    if via == "agent":
        env["VOIDRUN_PROXY_THROUGH_AGENT"] = "true"
    with server(**env) as srv, srv.client() as client:
        ports = [{"protocol": "http", "port": 8000}, {"protocol": "http", "port": 8001}]
        made = client.post(
            "/sandboxes", json={"name": "bench-proxy", "autoSleep": False, "ports": ports}
        )
        made.raise_for_status()
        box = made.json()["data"]["id"]
        client.post(
            f"/sandboxes/{box}/files/upload",
            params={"path": "/root/upstream.py"},
            content=APP.read_bytes(),
        ).raise_for_status()
        client.post(
            f"/sandboxes/{box}/exec",
            json={
                "command": f"head -c {args.mb * MB} /dev/urandom > /root/big.bin",
                "timeout": 300,
            },
        ).raise_for_status()
        for command in (
            "cd /root && exec python3 -m http.server 8000",
            "exec python3 /root/upstream.py 8001",
        ):
            client.post(
                f"/sandboxes/{box}/commands/run", json={"command": command}
            ).raise_for_status()
        base = srv.api.removesuffix("/api")
        proxied_url = f"{srv.api}/sandboxes/{box}/ports/8001/headers"
        auth = {"X-API-Key": srv.key}
        for _ in range(200):
            if client.get(proxied_url.removeprefix(srv.api)).status_code == 200:
                break
            time.sleep(0.05)
        init = sandbox_init(box)
        host = {"Host": "localhost:8001"}
        with (
            httpcore.ConnectionPool() as proxied,
            httpcore.ConnectionPool(network_backend=NetnsBackend(init)) as direct,
        ):
            direct_url = "http://localhost:8001/headers"
            for _ in range(200):  # warm both paths
                get(proxied, proxied_url, auth)
                get(direct, direct_url, host)
            lat_proxy: list[float] = []
            lat_direct: list[float] = []
            lat_api: list[float] = []
            api_url = f"{srv.api}/sandboxes/{box}"
            for _ in range(args.requests):  # an API route of the same server, for scale
                t0 = time.perf_counter()
                get(proxied, api_url, auth)
                lat_api.append((time.perf_counter() - t0) * 1000)
            api_before = cpu_seconds(srv.pid)
            for _ in range(args.requests):
                get(proxied, api_url, auth)
            api_per_request = (cpu_seconds(srv.pid) - api_before) / args.requests
            cpu_proxy_client = cpu_direct_client = 0.0
            for _ in range(args.requests):
                c0, t0 = time.process_time(), time.perf_counter()
                get(proxied, proxied_url, auth)
                c1, t1 = time.process_time(), time.perf_counter()
                get(direct, direct_url, host)
                c2, t2 = time.process_time(), time.perf_counter()
                lat_proxy.append((t1 - t0) * 1000)
                lat_direct.append((t2 - t1) * 1000)
                cpu_proxy_client += c1 - c0
                cpu_direct_client += c2 - c1
            server_before = cpu_seconds(srv.pid)
            for _ in range(args.requests):
                get(proxied, proxied_url, auth)
            server_per_request = (cpu_seconds(srv.pid) - server_before) / args.requests

            speeds: dict[str, list[float]] = {"proxied": [], "direct": []}
            server_cpu_per_gb: list[float] = []
            for _ in range(args.repeat):
                before = cpu_seconds(srv.pid)
                t0 = time.perf_counter()
                size = download(proxied, f"{srv.api}/sandboxes/{box}/ports/8000/big.bin", auth)
                elapsed = time.perf_counter() - t0
                server_cpu_per_gb.append((cpu_seconds(srv.pid) - before) / (size / 1e9))
                speeds["proxied"].append(size / MB / elapsed)
                t0 = time.perf_counter()
                size = download(direct, "http://localhost:8000/big.bin", {"Host": "localhost:8000"})
                speeds["direct"].append(size / MB / (time.perf_counter() - t0))
    n = args.requests
    print(f"\n[via {via}] GET {base}/…/ports/8001/headers vs the same in the netns ({n} each, ms)")
    print(f"{'':<52} {'p50':>8} {'p95':>8} {'p99':>8}")
    print(row("proxied (path form, X-API-Key)", lat_proxy))
    print(row("direct (socket in the sandbox's netns)", lat_direct))
    print(row("for scale: GET /api/sandboxes/{id} (same server)", lat_api))
    added = statistics.median(lat_proxy) - statistics.median(lat_direct)
    print(f"{'added by the proxy, p50':<52} {added:8.2f}")
    print(
        f"server CPU per request: proxied {server_per_request * 1000:.3f} ms, "
        f"GET /api/sandboxes/{{id}} {api_per_request * 1000:.3f} ms"
    )
    print(
        f"client CPU per request: proxied {cpu_proxy_client / n * 1000:.3f} ms, "
        f"direct {cpu_direct_client / n * 1000:.3f} ms"
    )
    print(f"\ndownload of {args.mb} MB, MB/s (best, median of {args.repeat})")
    for label, values in speeds.items():
        print(f"{label:<52} {max(values):8.1f} {statistics.median(values):8.1f}")
    ratio = statistics.median(speeds["proxied"]) / statistics.median(speeds["direct"])
    print(f"{'proxied / direct (medians)':<52} {ratio * 100:7.0f}%")
    print(f"server CPU per proxied GB: {statistics.median(server_cpu_per_gb):.2f} s")
    return added, statistics.median(speeds["proxied"]), ratio


if __name__ == "__main__":
    main()
