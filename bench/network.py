"""Sandbox networking: what it costs, measured beside the same thing without it, same run.

Usage: .venv/bin/python bench/network.py [-n 30] [--part create]   (root; builds the code
image if missing). One part per figure; each prints its own table:

* ``create``: ``POST /api/sandboxes`` (sync, no warm pool) p50/p95/p99 with
  ``VOIDRUN_SANDBOX_NETWORK=false`` (loopback only) and ``true`` (namespace, veth pair,
  nftables chain), one server each, creates interleaved in rounds so both see the same host.
* ``attach``: the host-side step alone (``HostNetwork.attach``: namespace, veth pair,
  addresses, routes, the sandbox's nftables chain) and its ``detach``, in this process: what
  networking adds to a create, without the noise of a whole create on a busy host. All of it
  runs on a worker thread while the disk is made and bwrap starts: a create waits for the
  namespace before spawning bwrap, for the rest before reporting the sandbox running.
  Subnets are free /24s of 10.208.0.0/13 (other servers on the host may use the default).
* ``proxy``: the preview proxy's latency (a small JSON answer, ``n`` × 100 requests) and
  download throughput (100 MB, 3 times) beside the same requests made straight to the server
  in the sandbox's network namespace, interleaved, same run (``bench/proxy.py``, which also
  runs alone with its own sizes).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

from _harness import Server, row, server

BATCH = 5


def free_subnet() -> str:
    """A /24 of 10.208.0.0/13 that no host route overlaps (other servers on this host)."""
    import ipaddress
    import secrets
    import subprocess

    out = subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout
    taken = [
        ipaddress.ip_network(line.split()[0], strict=False)
        for line in out.splitlines()
        if line.split() and line.split()[0] != "default"
    ]
    for _ in range(100):
        candidate = ipaddress.ip_network(
            f"10.{208 + secrets.randbelow(8)}.{secrets.randbelow(256)}.0/24"
        )
        if not any(candidate.overlaps(net) for net in taken):
            return str(candidate)
    raise RuntimeError("no free /24 in 10.208.0.0/13")


def create_once(srv: Server, name: str) -> float:
    with srv.client() as client:
        started = time.perf_counter()
        response = client.post("/sandboxes", json={"name": name})
        elapsed = (time.perf_counter() - started) * 1000
        response.raise_for_status()
        client.delete(f"/sandboxes/{response.json()['data']['id']}").raise_for_status()
    return elapsed


def part_create(n: int) -> None:
    subnet = free_subnet()
    samples: dict[str, list[float]] = {"off": [], "on": []}
    with contextlib.ExitStack() as stack:
        servers = {
            "off": stack.enter_context(
                server(VOIDRUN_WARM_POOL_SIZE="0", VOIDRUN_SANDBOX_NETWORK="false")
            ),
            "on": stack.enter_context(
                server(VOIDRUN_WARM_POOL_SIZE="0", VOIDRUN_SANDBOX_SUBNET=subnet)
            ),
        }
        for mode, srv in servers.items():  # warm-up (disk templates, caches)
            for i in range(3):
                create_once(srv, f"warm-{mode}-{i}")
        for round_ in range(0, n, BATCH):
            for mode, srv in servers.items():
                for i in range(min(BATCH, n - round_)):
                    samples[mode].append(create_once(srv, f"bench-{mode}-{round_ + i}"))
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={n}")
    print(row("POST /api/sandboxes, networking off (loopback)", samples["off"]))
    print(row("POST /api/sandboxes, networking on", samples["on"]))


def part_attach(n: int) -> None:
    import ipaddress
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from voidrun_server import ids
    from voidrun_server.drivers.namespace.network import HostNetwork, NetworkConfig
    from voidrun_server.drivers.namespace.state import Phase, RunDir, SandboxRecord

    state = Path(tempfile.mkdtemp(prefix="voidrun-bench-net-", dir="/var/tmp"))
    config = NetworkConfig(subnet=ipaddress.ip_network(free_subnet()), upstreams=())
    host = HostNetwork(state, config, [])
    attach, begin, detach = [], [], []
    try:
        for i in range(n + 3):
            sid = ids.new_id()
            run = RunDir.of(state, sid)
            os.mkdir(run.root)
            record = SandboxRecord(sid, "b", "/", 1, 64, 64, 0, Phase.CREATING)
            record.net_address = str(host.allocate())
            started = time.perf_counter()
            attaching = host.begin_attach(run, record)
            attaching.namespace()
            begun = time.perf_counter()
            attaching.wait()
            middle = time.perf_counter()
            host.detach(run, sid)
            ended = time.perf_counter()
            host.release(record.net_address)
            if i >= 3:
                attach.append((middle - started) * 1000)
                begin.append((begun - started) * 1000)
                detach.append((ended - middle) * 1000)
    finally:
        host.remove_all()
        host.close()
        shutil.rmtree(state)
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={n}")
    print(row("attach: netns + veth + addresses + routes + nft chain", attach))
    print(row("  of which until the namespace exists", begin))
    print(row("detach", detach))


def part_proxy(n: int) -> None:
    import proxy

    proxy.run(requests=n * 100, mb=100, repeat=3)


PARTS: dict[str, Callable[[int], None]] = {
    "create": part_create,
    "attach": part_attach,
    "proxy": part_proxy,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--part", choices=sorted(PARTS), action="append")
    args = parser.parse_args()
    for name in args.part or sorted(PARTS):
        print(f"== {name}")
        PARTS[name](args.n)


if __name__ == "__main__":
    main()
