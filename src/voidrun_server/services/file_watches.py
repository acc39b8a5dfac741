"""Watch sessions between ``POST /files/watch`` and the stream WebSocket (CONTRACT §B.6).

``POST`` checks the path and hands out a UUID4 ticket; the agent's inotify watch starts only
when the WebSocket attaches (and is in place before the upgrade completes, so nothing done
after the client's ``connect()`` returns is missed). A ticket is single-use, bound to the
caller's org and the sandbox, and expires if not attached within ``TICKET_TTL``.

Waiting tickets are bounded per org: each org has its own FIFO of at most
``MAX_TICKETS_PER_ORG`` (its oldest is dropped when full), so one tenant creating tickets in a
loop can only evict its own, never another org's. Unattached sessions cost a few bytes each and
no agent resources; the total is bounded by the number of orgs times the per-org cap.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import NotFoundError
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


class WatchRegistry:
    def __init__(self) -> None:
        self._tickets: dict[str, WatchTicket] = {}
        # Per org, ticket ids oldest first (insertion order; every ticket has the same TTL).
        self._by_org: dict[str, OrderedDict[str, None]] = {}

    def add(self, ticket: WatchTicket) -> str:
        self._expire(ticket.org_id)
        queue = self._by_org.setdefault(ticket.org_id, OrderedDict())
        while len(queue) >= MAX_TICKETS_PER_ORG:
            oldest, _ = queue.popitem(last=False)
            self._tickets.pop(oldest, None)
        session_id = str(uuid.uuid4())
        self._tickets[session_id] = ticket
        queue[session_id] = None
        return session_id

    def claim(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket:
        """Take the ticket (once); another org's or another sandbox's session is "not found"."""
        self._expire(caller.org_id)
        ticket = self._tickets.get(session_id)
        if ticket is None or ticket.org_id != caller.org_id or ticket.sandbox_id != sandbox_id:
            raise NotFoundError("Watch session not found", "start one with POST …/files/watch")
        self._drop(session_id, ticket.org_id)
        return ticket

    def waiting(self, org_id: str) -> int:
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
