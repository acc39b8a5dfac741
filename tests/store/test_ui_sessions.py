"""Dashboard sessions (services/ui_sessions.py) on SQLite and PostgreSQL: two key caches stand
for two API replicas sharing the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from voidrun_server.errors import AuthenticationError, PermissionDeniedError
from voidrun_server.services import accounts, keycache, ui_sessions
from voidrun_server.services.keycache import KeyCache
from voidrun_server.store import db
from voidrun_server.store.tables import UiSession
from voidrun_server.store.types import utcnow

TOUCH = timedelta(0)
HOUR = 3600.0


async def test_a_session_lives_until_expiry_sign_out_or_its_key_ends(
    db_url: str, tmp_path: Path
) -> None:
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    replicas = [KeyCache(keycache.source_for(db_url)) for _ in range(2)]
    try:
        await db.migrate(engine)
        async with db.transaction(sessions) as session:
            plain = await accounts.bootstrap(session, None, tmp_path / "bootstrap-key")
            assert plain
            caller = await accounts.authenticate(session, plain, TOUCH)
            other = await accounts.create_key(session, caller.org_id, caller.user_id, "other")

        async def new(key: str) -> ui_sessions.NewSession:
            async with db.transaction(sessions) as session:
                return await ui_sessions.sign_in(session, key, HOUR, TOUCH)

        async def live(plain_id: str) -> bool:
            """Whether every replica accepts the session (twice: cold, then cached)."""
            verdicts = []
            for cache in replicas * 2:
                try:
                    await ui_sessions.resolve(sessions, cache, plain_id)
                    verdicts.append(True)
                except AuthenticationError:
                    verdicts.append(False)
            assert len(set(verdicts)) == 1, verdicts
            return verdicts[0]

        with pytest.raises(AuthenticationError):
            await new("vr_" + "x" * 43)
        first, second, third = await new(plain), await new(plain), await new(other.plain)
        entry = await ui_sessions.resolve(sessions, replicas[0], first.plain_id)
        assert entry.principal == caller
        assert entry.csrf_token == first.entry.csrf_token != second.entry.csrf_token
        async with sessions() as session:  # only the digest is stored
            assert await session.get(UiSession, first.plain_id) is None
            assert await session.get(UiSession, ui_sessions.digest(first.plain_id)) is not None

        ui_sessions.check_csrf(entry, entry.csrf_token)
        for wrong in (None, "", second.entry.csrf_token):
            with pytest.raises(PermissionDeniedError):
                ui_sessions.check_csrf(entry, wrong)

        assert await live(first.plain_id) and await live(second.plain_id)
        async with db.transaction(sessions) as session:
            await ui_sessions.sign_out(session, first.plain_id)
        assert not await live(first.plain_id)
        assert await live(second.plain_id)

        async with db.transaction(sessions) as session:  # expiry, as the clock would make it
            await session.execute(
                update(UiSession)
                .where(UiSession.id_hash == ui_sessions.digest(second.plain_id))
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
            await accounts.set_key_active(session, caller.org_id, other.key.id, False)
        assert not await live(second.plain_id)  # expired (its key is still active)
        assert not await live(third.plain_id)  # its key deactivated
        async with db.transaction(sessions) as session:
            await accounts.set_key_active(session, caller.org_id, other.key.id, True)
        assert await live(third.plain_id)
        async with db.transaction(sessions) as session:
            await accounts.revoke_key(session, caller.org_id, other.key.id)
        assert not await live(third.plain_id)
    finally:
        for cache in replicas:
            await cache.close()
        await engine.dispose()
