"""The per-sandbox nftables transaction at 0 and N sandboxes' worth of rules (no sandboxes).

Usage: .venv/bin/python bench/network_rules.py [-n 200] [--sandboxes 0 500]   (root)

Builds the server's table in a scratch table (``voidrun_bench…``) with N sandboxes' chains,
map entries and a few domain sets, then times what a create, a PATCH and a destroy send
(``sandbox_rules`` new, ``sandbox_rules`` again, ``remove_sandbox``) and what the resolver
sends per answer (``add element`` to a domain set), each through libnftables in this process.
libnftables fetches a cache of what a command names before it runs it: these figures show
how much that grows with the table. Prints p50/p95/p99 per row; the table is deleted.
"""

from __future__ import annotations

import argparse
import ipaddress
import secrets
import time
from collections.abc import Callable

from _harness import row
from voidrun_server.drivers.base import NetworkPolicy
from voidrun_server.drivers.namespace import nftables

SUBNET = ipaddress.ip_network("10.213.0.0/16")
GATEWAY = SUBNET.network_address + 1
DOMAINS = [f"d{i}.example.org" for i in range(8)]


def _sandbox(i: int) -> tuple[str, str, ipaddress.IPv4Address]:
    sid = f"{i:024x}"
    return sid, f"vr{sid[-12:]}", SUBNET.network_address + 2 + i


def _policy(i: int) -> NetworkPolicy:
    if i % 3 == 0:
        return NetworkPolicy()
    if i % 3 == 1:
        return NetworkPolicy(allow_internet=False)
    return NetworkPolicy(allow_out=("198.51.100.0/24", DOMAINS[i % len(DOMAINS)]))


def timed(n: int, fn: Callable[[int], None]) -> tuple[list[float], list[float]]:
    """Wall-clock and this thread's CPU milliseconds (user + system: libnftables builds its
    cache in this thread, the kernel dumps the table in its syscalls) per call."""
    wall, cpu = [], []
    for i in range(n):
        started, started_cpu = time.perf_counter(), time.thread_time()
        fn(i)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.thread_time() - started_cpu) * 1000)
    return wall, cpu


def run(nft: nftables.Nft, table: str, sandboxes: int, n: int) -> None:
    script = nftables.table_script(table, SUBNET, GATEWAY, ())
    script += nftables.domain_sets(table, DOMAINS, ())
    chains = []
    for i in range(sandboxes):
        sid, link, address = _sandbox(i)
        chains.append(nftables.sandbox_rules(table, sid, link, address, _policy(i), new=True))
    nft.run(script + "".join(chains))
    base = 50_000

    def create(i: int) -> None:
        sid, link, address = _sandbox(base + i)
        nft.run(nftables.sandbox_rules(table, sid, link, address, _policy(i), new=True))

    def patch(i: int) -> None:
        sid, link, address = _sandbox(base + i)
        policy = NetworkPolicy(allow_internet=i % 2 == 0)
        nft.run(nftables.sandbox_rules(table, sid, link, address, policy, new=False))

    def destroy(i: int) -> None:
        sid, link, _ = _sandbox(base + i)
        nft.run_tolerant(nftables.remove_sandbox(table, sid, link))

    def resolved(i: int) -> None:  # what dnsmasq's --nftset sends for one answer
        address = ipaddress.IPv4Address("198.51.100.0") + (i % 250)
        nft.run(f"add element inet {table} {nftables.domain_set(DOMAINS[0])} {{ {address} }}")

    for label, fn in (
        ("create (chain, rules, map entries)", create),
        ("PATCH (flush chain, rules)", patch),
        ("destroy (map entries, chain)", destroy),
        ("resolver: add element", resolved),
    ):
        wall, cpu = timed(n, fn)
        print(row(f"{sandboxes:>4} sandboxes: {label}", wall))
        print(row(f"{sandboxes:>4} sandboxes: {label}, CPU", cpu))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--sandboxes", type=int, nargs="+", default=[0, 500])
    args = parser.parse_args()
    nft = nftables.Nft()
    print(f"{'what (ms)':<52} {'p50':>8} {'p95':>8} {'p99':>8}   n={args.n}")
    for count in args.sandboxes:
        table = f"voidrun_bench{secrets.token_hex(3)}"
        try:
            run(nft, table, count, args.n)
        finally:
            nft.run(nftables.delete_table(table))


if __name__ == "__main__":
    main()
