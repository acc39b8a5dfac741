"""One lock per key (a sandbox id), kept only while somebody holds or waits for it.

Status changes of one sandbox are serialised (``services/sandboxes.py``), but a map of one lock
per sandbox ever seen would grow with every sandbox created and deleted. Here a key's entry
exists only while it is in use: the last task to leave (or to give up waiting, e.g. when
cancelled) removes it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


@dataclass
class _Entry:
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    users: int = 0  # holding or waiting


class KeyedLocks:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries


def advisory_key(sandbox_id: str) -> int:
    """The PostgreSQL advisory lock key (signed 64-bit) of one sandbox."""
    digest = hashlib.sha256(b"voidrun sandbox " + sandbox_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@asynccontextmanager
async def across_replicas(
    sessions: async_sessionmaker[AsyncSession], sandbox_id: str
) -> AsyncIterator[None]:
    """Hold the sandbox's transaction-level advisory lock (PostgreSQL) while the body runs:
    API replicas serialise one sandbox's lifecycle verbs as one process does with
    :class:`KeyedLocks`. The lock's transaction holds one pooled connection meanwhile and
    ends (releasing it) however the body ends."""
    async with sessions() as session, session.begin():
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(sandbox_id)}
        )
        yield
