"""Watch tickets are bounded per org (one tenant cannot evict another's), single-use and
org-bound, in memory and in the database (``watch_tickets``, shared by API replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from voidrun_server.errors import NotFoundError
from voidrun_server.services import file_watches
from voidrun_server.services.accounts import Principal
from voidrun_server.services.file_watches import (
    SharedTickets,
    WatchRegistry,
    WatchTicket,
    WatchTickets,
)
from voidrun_server.store import db

ORG_A = Principal(key_id="ka", org_id="a" * 24, user_id="ua")
ORG_B = Principal(key_id="kb", org_id="b" * 24, user_id="ub")
Store = Callable[[WatchTickets], Awaitable[None]]


def ticket(org: Principal, sandbox_id: str = "s" * 24) -> WatchTicket:
    return WatchTicket(
        org_id=org.org_id, sandbox_id=sandbox_id, path="/", recursive=False, ignore_hidden=True
    )


@pytest.fixture(params=["memory", "database"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Store], None]:
    def go(body: Store) -> None:
        async def main() -> None:
            if request.param == "memory":
                await body(WatchRegistry())
                return
            engine = db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
            try:
                await db.migrate(engine)
                await body(SharedTickets(db.session_factory(engine)))
            finally:
                await engine.dispose()

        asyncio.run(main())

    return go


def test_one_org_flooding_tickets_does_not_evict_another_orgs(
    run: Callable[[Store], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_watches, "MAX_TICKETS_PER_ORG", 20)

    async def body(registry: WatchTickets) -> None:
        b_ticket = await registry.add(ticket(ORG_B))
        a_tickets = [await registry.add(ticket(ORG_A)) for _ in range(50)]
        assert (await registry.claim(b_ticket, ORG_B, "s" * 24)).org_id == ORG_B.org_id
        # Org A is bounded by its own FIFO: its newest ticket works, its oldest were dropped.
        assert (await registry.claim(a_tickets[-1], ORG_A, "s" * 24)).org_id == ORG_A.org_id
        with pytest.raises(NotFoundError):
            await registry.claim(a_tickets[0], ORG_A, "s" * 24)
        assert await registry.waiting(ORG_A.org_id) == 19

    run(body)


def test_tickets_are_single_use_and_org_bound(run: Callable[[Store], None]) -> None:
    async def body(registry: WatchTickets) -> None:
        session_id = await registry.add(ticket(ORG_A))
        with pytest.raises(NotFoundError):
            await registry.claim(session_id, ORG_B, "s" * 24)
        with pytest.raises(NotFoundError):
            await registry.claim(session_id, ORG_A, "t" * 24)
        await registry.claim(session_id, ORG_A, "s" * 24)
        with pytest.raises(NotFoundError):
            await registry.claim(session_id, ORG_A, "s" * 24)

    run(body)


def test_expired_tickets_are_refused_and_swept(
    run: Callable[[Store], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(registry: WatchTickets) -> None:
        monkeypatch.setattr(file_watches, "TICKET_TTL", -1.0)
        stale = await registry.add(ticket(ORG_A))
        monkeypatch.setattr(file_watches, "TICKET_TTL", 60.0)
        await registry.add(ticket(ORG_A))  # sweeps the expired one
        with pytest.raises(NotFoundError):
            await registry.claim(stale, ORG_A, "s" * 24)
        assert await registry.waiting(ORG_A.org_id) == 1

    run(body)
