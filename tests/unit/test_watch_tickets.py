"""Watch tickets are bounded per org: one tenant cannot evict another's."""

from __future__ import annotations

import pytest

from voidrun_server.errors import NotFoundError
from voidrun_server.services.accounts import Principal
from voidrun_server.services.file_watches import WatchRegistry, WatchTicket

ORG_A = Principal(key_id="ka", org_id="a" * 24, user_id="ua")
ORG_B = Principal(key_id="kb", org_id="b" * 24, user_id="ub")


def ticket(org: Principal, sandbox_id: str = "s" * 24) -> WatchTicket:
    return WatchTicket(
        org_id=org.org_id, sandbox_id=sandbox_id, path="/", recursive=False, ignore_hidden=True
    )


def test_one_org_flooding_tickets_does_not_evict_another_orgs() -> None:
    registry = WatchRegistry()
    b_ticket = registry.add(ticket(ORG_B))
    a_tickets = [registry.add(ticket(ORG_A)) for _ in range(5000)]
    assert registry.claim(b_ticket, ORG_B, "s" * 24).org_id == ORG_B.org_id
    # Org A is bounded by its own FIFO: its newest ticket works, its oldest were dropped.
    assert registry.claim(a_tickets[-1], ORG_A, "s" * 24).org_id == ORG_A.org_id
    with pytest.raises(NotFoundError):
        registry.claim(a_tickets[0], ORG_A, "s" * 24)
    assert registry.waiting(ORG_A.org_id) < 5000


def test_tickets_are_single_use_and_org_bound() -> None:
    registry = WatchRegistry()
    session_id = registry.add(ticket(ORG_A))
    with pytest.raises(NotFoundError):
        registry.claim(session_id, ORG_B, "s" * 24)
    with pytest.raises(NotFoundError):
        registry.claim(session_id, ORG_A, "t" * 24)
    registry.claim(session_id, ORG_A, "s" * 24)
    with pytest.raises(NotFoundError):
        registry.claim(session_id, ORG_A, "s" * 24)
