"""Open streams per API key, ended when their key stops being valid.

Authentication happens once, when a WebSocket, an SSE/NDJSON stream or a long poll is opened;
without this module such a stream would outlive the revocation of its key for as long as the
client keeps it open. Every long-lived response runs inside :meth:`StreamRegistry.guard`, a
cancel scope registered under the key id. :func:`end_revoked_streams` (one task in the app's
lifespan task group) asks the database every ``CHECK_INTERVAL`` which of the keys that
currently stream were deleted or deactivated — one primary-key query, skipped while nothing
streams — and cancels their scopes. That catches revocations from this process, another
server node and the CLI alike, within about ``CHECK_INTERVAL`` plus one query.

How a cancelled stream ends is up to its route (``api/streams.py``): WebSockets close with
1008, SSE streams end with a final ``error`` event, long polls answer 401.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import anyio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from . import accounts

log = logging.getLogger(__name__)

CHECK_INTERVAL = 0.5
REVOKED_REASON = "API key revoked or deactivated"


class StreamRegistry:
    def __init__(self) -> None:
        self._open: dict[str, set[anyio.CancelScope]] = {}

    @contextmanager
    def guard(self, key_id: str) -> Iterator[anyio.CancelScope]:
        """Run the body until it ends or the key is revoked; afterwards the yielded scope's
        ``cancelled_caught`` says whether revocation ended it."""
        scope = anyio.CancelScope()
        self._open.setdefault(key_id, set()).add(scope)
        try:
            with scope:
                yield scope
        finally:
            scopes = self._open.get(key_id)
            if scopes is not None:
                scopes.discard(scope)
                if not scopes:
                    del self._open[key_id]

    def streaming_keys(self) -> list[str]:
        return list(self._open)

    def end(self, key_ids: set[str]) -> int:
        """Cancel every stream opened with one of ``key_ids``; returns how many."""
        ended = 0
        for key_id in key_ids:
            for scope in self._open.get(key_id, set()):
                scope.cancel()
                ended += 1
        return ended


async def end_revoked_streams(
    registry: StreamRegistry,
    sessions: async_sessionmaker[AsyncSession],
    interval: float = CHECK_INTERVAL,
) -> None:
    """Forever: end the streams of keys that were revoked or deactivated (see module doc)."""
    while True:
        await anyio.sleep(interval)
        keys = registry.streaming_keys()
        if not keys:
            continue
        try:
            async with sessions() as session:
                gone = await accounts.inactive_keys(session, keys)
        except Exception as exc:  # a database hiccup must not end the loop
            log.warning("could not check keys of open streams: %s", exc)
            continue
        if gone:
            ended = registry.end(gone)
            log.info("ended %d stream(s) of %d revoked key(s)", ended, len(gone))
