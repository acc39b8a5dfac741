"""One PostgreSQL connection of its own (asyncpg: no pool, no SQLAlchemy) for single-statement
reads that must be fresh and cheap (one round trip, ~0.2 ms locally): the key epoch
(``services/keycache.py``) and the row versions an API replica checks its cached sandbox rows
against (``services/row_versions.py``).

Reads are serialised on the connection (asyncpg runs one statement at a time). A read that
fails (connection lost, timeout, server error) returns None and closes the connection; the next
connect is tried at most every :data:`RECONNECT_AFTER` seconds, so a database outage costs the
callers their fast path (they take the ordinary database path, which fails as it would), never
a stall.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

RECONNECT_AFTER = 1.0


def postgres_dsn(url: str) -> str | None:
    """The plain ``postgresql://`` DSN of a SQLAlchemy URL; None when it is not PostgreSQL."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return None
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


class DirectPostgres:
    def __init__(self, dsn: str, what: str, connect_timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.what = what  # for the log: what the reads are for
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._failed_at = -RECONNECT_AFTER

    async def fetchrow(self, query: str, *args: object) -> tuple[Any, ...] | None:
        """The first row of ``query`` (None: no row, or the read failed)."""
        import asyncpg  # type: ignore[import-untyped]  # only with PostgreSQL

        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    if time.monotonic() - self._failed_at < RECONNECT_AFTER:
                        return None
                    self._conn = await asyncpg.connect(self.dsn, timeout=self.connect_timeout)
                row = await self._conn.fetchrow(query, *args, timeout=self.connect_timeout)
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning("%s: %s (using the database path meanwhile)", self.what, exc)
                self._failed_at = time.monotonic()
                await self._close()
                return None
        return None if row is None else tuple(row)

    async def close(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await conn.close(timeout=1)
            except Exception:  # already broken
                conn.terminate()
