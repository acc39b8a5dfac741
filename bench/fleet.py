"""A fleet beside the all-in-one server, same run: create and exec latency through an API
replica to a node daemon (control RPC + agent tunnel) against ``serve`` alone, and create
throughput with 1, 2 and 3 nodes.

Usage: .venv/bin/python bench/fleet.py [-n 40] [--execs 300] [--burst 24] [--pool 0]
(root; PostgreSQL from VOIDRUN_TEST_POSTGRES_URL, else scripts/pg-test.sh starts one; builds
the code image if missing). Both sides use their own fresh PostgreSQL database and the same
warm pool size (default 0: cold creates on both). Throughput: ``--burst`` creates, 6 at a
time, through one replica with only k nodes taking placements (the others drained), sandboxes
per second; each burst is deleted before the next.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from _harness import IMAGES, row, server

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("VOIDRUN_TEST_IMAGES_DIR", str(IMAGES))
from tests.support.fleet import Fleet  # noqa: E402

QUOTAS = {
    "VOIDRUN_ORG_MAX_SANDBOXES": "100000",
    "VOIDRUN_ORG_MAX_CPU": "100000",
    "VOIDRUN_ORG_MAX_MEM_MB": str(1 << 40),
    "VOIDRUN_ORG_MAX_DISK_MB": str(1 << 40),
}


def postgres_url() -> str:
    url = os.environ.get("VOIDRUN_TEST_POSTGRES_URL", "")
    if not url:
        script = Path(__file__).resolve().parents[1] / "scripts" / "pg-test.sh"
        url = subprocess.run([str(script), "start"], capture_output=True, text=True).stdout
    return url.strip()


def new_database(admin: str) -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tests.conftest as conftest

    conftest.POSTGRES_URL = admin
    return conftest._create_pg_database()


def creates(client: httpx.Client, n: int, warm: int = 3) -> list[float]:
    """``warm`` creates first, not counted: each node's first ones start its fork server."""
    times = []
    for i in range(n + warm):
        started = time.perf_counter()
        response = client.post("/sandboxes", json={"name": f"bench-{i}"})
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        client.delete(f"/sandboxes/{response.json()['data']['id']}").raise_for_status()
        if i >= warm:
            times.append(elapsed)
    return times


def execs(client: httpx.Client, n: int) -> list[float]:
    box = client.post("/sandboxes", json={"name": "bench-exec"}).json()["data"]["id"]
    times = []
    for i in range(n + 30):
        started = time.perf_counter()
        client.post(f"/sandboxes/{box}/exec", json={"command": "true"}).raise_for_status()
        if i >= 30:
            times.append((time.perf_counter() - started) * 1000)
    client.delete(f"/sandboxes/{box}").raise_for_status()
    return times


def burst(replica_api: str, key: str, count: int) -> float:
    def one(i: int) -> str:
        with httpx.Client(base_url=replica_api, headers={"X-API-Key": key}, timeout=120) as c:
            response = c.post("/sandboxes", json={"name": f"burst-{i}"})
            response.raise_for_status()
            return str(response.json()["data"]["id"])

    started = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        boxes = list(pool.map(one, range(count)))
    rate = count / (time.perf_counter() - started)
    with httpx.Client(base_url=replica_api, headers={"X-API-Key": key}, timeout=120) as c:
        for box in boxes:
            c.delete(f"/sandboxes/{box}").raise_for_status()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=40)
    parser.add_argument("--execs", type=int, default=300)
    parser.add_argument("--burst", type=int, default=24)
    parser.add_argument("--pool", type=int, default=0, help="warm pool per server and node")
    args = parser.parse_args()
    pool = str(args.pool)  # the same on both sides: cold creates compare with cold ones
    admin = postgres_url()
    results: dict[str, list[float]] = {}
    single_server = server(VOIDRUN_DATABASE_URL=new_database(admin), VOIDRUN_WARM_POOL_SIZE=pool)
    with single_server as single, single.client() as client:
        results["create, all-in-one serve"] = creates(client, args.n)
        results["exec `true`, all-in-one serve"] = execs(client, args.execs)
    fleet = Fleet(new_database(admin), Path(tempfile.mkdtemp(prefix="voidrun-bench-fleet-")))
    rates: dict[int, float] = {}
    try:
        replica = fleet.add_replica(VOIDRUN_LOG_LEVEL="warning", **QUOTAS)
        for name in ("n1", "n2", "n3"):
            fleet.add_node(name, VOIDRUN_LOG_LEVEL="warning", VOIDRUN_WARM_POOL_SIZE=pool)
        with replica.client() as client:
            client.timeout = httpx.Timeout(120)
            results["create, replica -> node"] = creates(client, args.n, 3 * len(fleet.nodes))
            results["exec `true`, replica -> node (tunnel)"] = execs(client, args.execs)
        for k in (1, 2, 3):
            for i, node in enumerate(fleet.nodes):
                verb = "ready" if i < k else "drain"
                assert replica.cli("nodes", verb, node.node_id).returncode == 0
            rates[k] = burst(replica.api, replica.api_key, args.burst)
    finally:
        fleet.close()
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}")
    for label, samples in results.items():
        print(row(label, samples))
    for k, rate in rates.items():
        print(f"create throughput, {k} node(s), 6 at a time: {rate:6.1f} sandboxes/s")


if __name__ == "__main__":
    main()
