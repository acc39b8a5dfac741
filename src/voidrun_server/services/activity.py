"""When each sandbox was last used, recorded in memory and written in batches.

Every data-plane call (and every interval of a followed stream) marks its sandbox as used.
Writing that per request would put a database transaction on the hot path, so uses are kept in
memory and written in one transaction every :attr:`ActivityLog.interval` by
:meth:`ActivityLog.flush_forever` (the app's task group), before every auto-sleep pass
(``reconcile.auto_sleep``) and at shutdown. The interval is short enough that auto-sleep never
sees a sandbox in use as idle (CONTRACT §C.6).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.types import utcnow

log = logging.getLogger(__name__)
WRITE_INTERVAL = timedelta(seconds=5)
MIN_INTERVAL = 0.2


class ActivityLog:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], idle_seconds: float) -> None:
        self._sessions = sessions
        self._pending: dict[str, datetime] = {}  # last use not yet written
        idle = timedelta(seconds=idle_seconds)
        self.interval = max(min(WRITE_INTERVAL, idle / 4).total_seconds(), MIN_INTERVAL)

    def record(self, sandbox_id: str) -> None:
        self._pending[sandbox_id] = utcnow()

    def pending(self, sandbox_id: str) -> datetime | None:
        """The last use recorded but not written yet (the row's value is older then)."""
        return self._pending.get(sandbox_id)

    def forget(self, sandbox_id: str) -> None:
        """The sandbox stopped running: a late write must not make it look used."""
        self._pending.pop(sandbox_id, None)

    async def flush(self) -> None:
        """Write what was recorded since the last flush, in one transaction."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        try:
            async with transaction(self._sessions) as session:
                for sandbox_id, when in pending.items():
                    await repo.touch_activity(session, sandbox_id, when)
        except BaseException:
            for sandbox_id, when in pending.items():  # keep it for the next flush
                newer = self._pending.get(sandbox_id)
                if newer is None or newer < when:
                    self._pending[sandbox_id] = when
            raise

    async def flush_forever(self) -> None:
        """The background loop owned by the app's task group."""
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:  # a database hiccup must not end the loop
                log.warning("could not record sandbox activity: %s", exc)
