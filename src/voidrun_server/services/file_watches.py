"""Watch sessions between ``POST /files/watch`` and the stream WebSocket (CONTRACT §B.6).

``POST`` checks the path and hands out a UUID4 ticket; the agent's inotify watch starts only
when the WebSocket attaches (and is in place before the upgrade completes, so nothing done
after the client's ``connect()`` returns is missed). A ticket is single-use, bound to the
caller's org and the sandbox, and expires if not attached within ``TICKET_TTL``.

Waiting tickets are bounded per org: each org has its own FIFO of at most
``MAX_TICKETS_PER_ORG`` (its oldest is dropped when full), so one tenant creating tickets in a
loop can only evict its own, never another org's. Unattached sessions cost a few bytes each and
no agent resources; the total is bounded by the number of orgs times the per-org cap.

Two stores behind one interface (:class:`WatchTickets`): :class:`WatchRegistry` keeps them in
this process (the all-in-one server on SQLite: no database round trip); :class:`SharedTickets`
keeps them in the ``watch_tickets`` table, so the WebSocket may reach any API replica
(``VOIDRUN_ROLE=api``, or any PostgreSQL database). :func:`tickets_for` picks one.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..config import Settings
from ..errors import NotFoundError
from ..store.db import transaction
from ..store.repos import watch_tickets as repo
from ..store.tables import WatchTicketRow
from ..store.types import utcnow
from .accounts import Principal

TICKET_TTL = 60.0
MAX_TICKETS_PER_ORG = 256


@dataclass(frozen=True)
class WatchTicket:
    org_id: str
    sandbox_id: str
    path: str
    recursive: bool
    ignore_hidden: bool
    expires: float = field(default_factory=lambda: time.monotonic() + TICKET_TTL)


class WatchTickets(Protocol):
    async def add(self, ticket: WatchTicket) -> str: ...

    async def claim(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket: ...

    async def waiting(self, org_id: str) -> int: ...


def _not_found() -> NotFoundError:
    return NotFoundError("Watch session not found", "start one with POST …/files/watch")


def tickets_for(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> WatchTickets:
    """In the database when replicas may share it, else in this process."""
    shared = settings.role == "api" or settings.resolved_database_url.startswith("postgresql")
    return SharedTickets(sessions) if shared else WatchRegistry()


class SharedTickets:
    """Tickets in the database: any replica takes one, once (``DELETE … RETURNING``)."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def add(self, ticket: WatchTicket) -> str:
        session_id = str(uuid.uuid4())
        now = utcnow()
        row = WatchTicketRow(
            id=session_id,
            org_id=ticket.org_id,
            sandbox_id=ticket.sandbox_id,
            path=ticket.path,
            recursive=ticket.recursive,
            ignore_hidden=ticket.ignore_hidden,
            expires_at=now + timedelta(seconds=TICKET_TTL),
        )
        async with transaction(self.sessions) as session:
            await repo.add(session, row, now, MAX_TICKETS_PER_ORG)
        return session_id

    async def claim(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket:
        async with transaction(self.sessions) as session:
            row = await repo.take(session, session_id, caller.org_id, sandbox_id, utcnow())
        if row is None:
            raise _not_found()
        return WatchTicket(row.org_id, row.sandbox_id, row.path, row.recursive, row.ignore_hidden)

    async def waiting(self, org_id: str) -> int:
        async with self.sessions() as session:
            return await repo.waiting(session, org_id, utcnow())


class WatchRegistry:
    def __init__(self) -> None:
        self._tickets: dict[str, WatchTicket] = {}
        # Per org, ticket ids oldest first (insertion order; every ticket has the same TTL).
        self._by_org: dict[str, OrderedDict[str, None]] = {}

    async def add(self, ticket: WatchTicket) -> str:
        self._expire(ticket.org_id)
        queue = self._by_org.setdefault(ticket.org_id, OrderedDict())
        while len(queue) >= MAX_TICKETS_PER_ORG:
            oldest, _ = queue.popitem(last=False)
            self._tickets.pop(oldest, None)
        session_id = str(uuid.uuid4())
        self._tickets[session_id] = ticket
        queue[session_id] = None
        return session_id

    async def claim(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket:
        """Take the ticket (once); another org's or another sandbox's session is "not found"."""
        self._expire(caller.org_id)
        ticket = self._tickets.get(session_id)
        if ticket is None or ticket.org_id != caller.org_id or ticket.sandbox_id != sandbox_id:
            raise _not_found()
        self._drop(session_id, ticket.org_id)
        return ticket

    async def waiting(self, org_id: str) -> int:
        """Unexpired tickets an org holds (for tests and metrics)."""
        self._expire(org_id)
        return len(self._by_org.get(org_id, ()))

    def _drop(self, session_id: str, org_id: str) -> None:
        del self._tickets[session_id]
        queue = self._by_org.get(org_id)
        if queue is not None:
            queue.pop(session_id, None)
            if not queue:
                del self._by_org[org_id]

    def _expire(self, org_id: str) -> None:
        """Drop the org's expired tickets: the oldest come first, so stop at the first live."""
        now = time.monotonic()
        queue = self._by_org.get(org_id)
        while queue:
            session_id = next(iter(queue))
            if self._tickets[session_id].expires > now:
                break
            self._drop(session_id, org_id)
