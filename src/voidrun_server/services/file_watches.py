"""Watch sessions between ``POST /files/watch`` and the stream WebSocket (CONTRACT §B.6).

``POST`` checks the path and hands out a UUID4 ticket; the agent's inotify watch starts only
when the WebSocket attaches (and is in place before the upgrade completes, so nothing done
after the client's ``connect()`` returns is missed). A ticket is single-use, bound to the
caller's org and the sandbox, and expires if not attached within ``TICKET_TTL``; at most
``MAX_TICKETS`` wait at once (the oldest is dropped), so unattached sessions cost a few bytes
each and no agent resources.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from ..errors import NotFoundError
from .accounts import Principal

TICKET_TTL = 60.0
MAX_TICKETS = 4096


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
        self._tickets: OrderedDict[str, WatchTicket] = OrderedDict()

    def add(self, ticket: WatchTicket) -> str:
        self._expire()
        while len(self._tickets) >= MAX_TICKETS:
            self._tickets.popitem(last=False)
        session_id = str(uuid.uuid4())
        self._tickets[session_id] = ticket
        return session_id

    def claim(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket:
        """Take the ticket (once); another org's or another sandbox's session is "not found"."""
        self._expire()
        ticket = self._tickets.get(session_id)
        if ticket is None or ticket.org_id != caller.org_id or ticket.sandbox_id != sandbox_id:
            raise NotFoundError("Watch session not found", "start one with POST …/files/watch")
        del self._tickets[session_id]
        return ticket

    def _expire(self) -> None:
        now = time.monotonic()
        while self._tickets:
            session_id, ticket = next(iter(self._tickets.items()))
            if ticket.expires > now:
                break
            del self._tickets[session_id]
