"""Watch tickets: issue + take, in memory (all-in-one on SQLite) vs in the database
(``watch_tickets``: API replicas, PostgreSQL), the cost a ``POST …/files/watch`` and its
WebSocket pay for the store alone.

Usage: .venv/bin/python bench/watch_tickets.py [--count 2000] [--postgres URL]

SQLite in a temporary file; with ``--postgres`` (a ``postgresql+asyncpg://`` URL of a scratch
database) PostgreSQL too. Prints the median and p99 per issue+take pair for each store and
the in-memory floor measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from voidrun_server.services.accounts import Principal
from voidrun_server.services.file_watches import (
    SharedTickets,
    WatchRegistry,
    WatchTicket,
    WatchTickets,
)
from voidrun_server.store import db

ORG = Principal(key_id="k" * 24, org_id="o" * 24, user_id="u" * 24)


async def pairs(store: WatchTickets, count: int) -> list[float]:
    out = []
    for _ in range(count):
        begin = time.perf_counter()
        ticket = await store.add(WatchTicket(ORG.org_id, "s" * 24, "/root", False, True))
        await store.claim(ticket, ORG, "s" * 24)
        out.append(time.perf_counter() - begin)
    return out


def report(name: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p50 = statistics.median(ordered) * 1e3
    p99 = ordered[int(len(ordered) * 0.99) - 1] * 1e3
    print(f"{name:<12} issue+take  p50 {p50:8.3f} ms   p99 {p99:8.3f} ms")


async def database(url: str, count: int) -> list[float]:
    engine = db.create_engine(url)
    try:
        await db.migrate(engine)
        return await pairs(SharedTickets(db.session_factory(engine)), count)
    finally:
        await engine.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--postgres", default="")
    args = parser.parse_args()
    report("memory", await pairs(WatchRegistry(), args.count))
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.sqlite'}"
        report("sqlite", await database(url, args.count))
    if args.postgres:
        report("postgresql", await database(args.postgres, args.count))


if __name__ == "__main__":
    asyncio.run(main())
