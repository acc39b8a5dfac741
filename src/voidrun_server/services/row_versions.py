"""The data plane of an API replica without a session per call: its cached sandbox rows,
checked against the database in one cheap read.

An all-in-one server changes its sandboxes' rows itself, so it serves running sandboxes from
memory (``SandboxService._live``). A replica cannot: another replica may stop, delete or
resume the sandbox at any moment. It used to read the whole row through a SQLAlchemy session
on every exec (~1.5–2 ms on PostgreSQL). Now it keeps the row it read last and, on each call,
reads only the row's status and ``updated_at`` on a connection of its own
(``store/direct.py``, one round trip): every change of a sandbox row sets ``updated_at``
(the column's ``onupdate``, also for Core ``UPDATE`` statements), so a cached row whose
status is still ``running`` and whose ``updated_at`` has not moved is the row the database
holds. Any mismatch, a missing row or a failed read means: read the row again the ordinary way.
The read starts after the request arrived, so a change committed before it is always seen.
"""

from __future__ import annotations

from datetime import datetime

from ..store.direct import DirectPostgres, postgres_dsn
from ..store.tables import Sandbox
from .lifecycle import Status

__all__ = ["RowVersions", "row_versions_for"]

VERSION_QUERY = "SELECT status, updated_at FROM sandboxes WHERE id = $1"


class RowVersions:
    def __init__(self, direct: DirectPostgres) -> None:
        self._direct = direct

    async def still_running(self, row: Sandbox) -> bool:
        """Whether ``row`` (read earlier) is still what the database holds, and running."""
        current = await self._direct.fetchrow(VERSION_QUERY, row.id)
        if current is None:
            return False
        status, updated_at = current
        return (
            status == Status.RUNNING
            and isinstance(updated_at, datetime)
            and updated_at == row.updated_at
        )

    async def close(self) -> None:
        await self._direct.close()


def row_versions_for(url: str) -> RowVersions | None:
    """The checker for an API replica's database (PostgreSQL), else None."""
    dsn = postgres_dsn(url)
    return RowVersions(DirectPostgres(dsn, "sandbox row versions")) if dsn is not None else None
