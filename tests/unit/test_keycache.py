"""The key cache and its epoch readers (services/keycache.py), without a server."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

from voidrun_server.services.accounts import Principal
from voidrun_server.services.keycache import Entry, KeyCache, SqliteEpoch, source_for
from voidrun_server.store.types import utcnow

WHO = Principal(key_id="k" * 24, org_id="o" * 24, user_id="u" * 24)
HOUR = timedelta(hours=1)


class FakeEpoch:
    def __init__(self) -> None:
        self.value: int | None = 0

    async def read(self) -> int | None:
        return self.value

    async def close(self) -> None:
        pass


def test_a_moved_epoch_empties_the_cache() -> None:
    async def run() -> None:
        source = FakeEpoch()
        cache = KeyCache(source)
        epoch = await cache.epoch()
        cache.add("d", Entry(WHO, utcnow()), epoch)
        assert cache.lookup("d", HOUR) == WHO
        source.value = 1
        assert await cache.epoch() == 1
        assert cache.lookup("d", HOUR) is None

    asyncio.run(run())


def test_a_lookup_that_raced_with_a_revocation_is_not_cached() -> None:
    async def run() -> None:
        source = FakeEpoch()
        cache = KeyCache(source)
        before = await cache.epoch()  # request 1 reads the epoch, then queries the database
        source.value = 1  # meanwhile a revocation commits
        await cache.epoch()  # request 2 sees it
        cache.add("d", Entry(WHO, utcnow()), before)  # request 1's result arrives: too old
        assert cache.lookup("d", HOUR) is None

    asyncio.run(run())


def test_unknown_epoch_means_no_cache() -> None:
    async def run() -> None:
        source = FakeEpoch()
        cache = KeyCache(source)
        cache.add("d", Entry(WHO, utcnow()), await cache.epoch())
        source.value = None
        assert await cache.epoch() is None
        assert len(cache) == 0
        cache.add("d", Entry(WHO, utcnow()), None)
        assert len(cache) == 0

    asyncio.run(run())


def test_bounded_lru_and_touch_due() -> None:
    async def run() -> None:
        cache = KeyCache(FakeEpoch(), size=2)
        epoch = await cache.epoch()
        for digest in "abc":
            cache.add(digest, Entry(WHO, utcnow()), epoch)
        assert len(cache) == 2 and cache.lookup("a", HOUR) is None
        cache.add("old", Entry(WHO, utcnow() - 2 * HOUR), epoch)
        assert cache.lookup("old", HOUR) is None  # lastUsedAt is due: the database path

    asyncio.run(run())


def test_sqlite_epoch_sees_another_connections_commit(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("CREATE TABLE key_epoch (id INTEGER PRIMARY KEY, epoch BIGINT)")
    other.execute("INSERT INTO key_epoch VALUES (1, 0)")
    reader = SqliteEpoch(str(path))
    assert reader.read_now() == 0
    for n in range(1, 50):
        other.execute("UPDATE key_epoch SET epoch = epoch + 1")
        assert reader.read_now() == n
    other.close()


def test_sqlite_epoch_fails_closed(tmp_path: Path) -> None:
    reader = SqliteEpoch(str(tmp_path / "no-table.db"))
    assert reader.read_now() is None


def test_source_for_urls(tmp_path: Path) -> None:
    assert isinstance(source_for(f"sqlite+aiosqlite:///{tmp_path / 'v.db'}"), SqliteEpoch)
    assert source_for("sqlite+aiosqlite:///:memory:") is None
    pg = source_for("postgresql+asyncpg://u:p@127.0.0.1:5432/db")
    assert pg is not None and type(pg).__name__ == "PostgresEpoch"
