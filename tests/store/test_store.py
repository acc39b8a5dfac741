"""Migrations and account storage on every backend."""

from __future__ import annotations

import secrets
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from voidrun_server.errors import AuthenticationError, ConflictError, InvalidInputError
from voidrun_server.services import accounts
from voidrun_server.store import db
from voidrun_server.store.tables import Base


async def test_migrations_match_tables(db_url: str) -> None:
    engine = db.create_engine(db_url)
    try:
        await db.migrate(engine)
        await db.migrate(engine)  # idempotent on every start

        def diff(connection: Connection) -> list[object]:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))

        async with engine.connect() as connection:
            assert await connection.run_sync(diff) == []
    finally:
        await engine.dispose()


async def test_bootstrap_and_authentication(db_url: str, tmp_path: Path) -> None:
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    key_file = tmp_path / "keys" / "bootstrap-key"
    try:
        await db.migrate(engine)
        async with db.transaction(sessions) as session:
            plain = await accounts.bootstrap(session, None, key_file)
        assert plain and key_file.read_text().strip() == plain
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        async with db.transaction(sessions) as session:
            assert await accounts.bootstrap(session, None, key_file) is None  # only on first start
            caller = await accounts.authenticate(session, plain, timedelta(0))
            configured = "vr_" + secrets.token_urlsafe(32)
            assert await accounts.bootstrap(session, configured, key_file) is None
            assert (await accounts.authenticate(session, configured, timedelta(0))).org_id == (
                caller.org_id
            )
            with pytest.raises(InvalidInputError):
                await accounts.bootstrap(session, "short", key_file)
        async with db.transaction(sessions) as session:
            await accounts.set_key_active(session, caller.org_id, caller.key_id, False)
        async with db.transaction(sessions) as session:
            with pytest.raises(AuthenticationError):
                await accounts.authenticate(session, plain, timedelta(0))
    finally:
        await engine.dispose()


async def test_org_and_user_rules(db_url: str) -> None:
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        await db.migrate(engine)
        async with db.transaction(sessions) as session:
            org = await accounts.create_org(session, "acme")
            user = await accounts.create_user(session, org, "Dev@Acme.example")
            assert user.email == "dev@acme.example" and org.owner_id == user.id
            with pytest.raises(ConflictError):
                await accounts.create_user(session, org, "dev@acme.example")
            with pytest.raises(InvalidInputError):
                await accounts.create_user(session, org, "not-an-email")
            with pytest.raises(InvalidInputError):
                await accounts.create_key(session, org.id, user.id, "x" * 26)
        async with db.transaction(sessions) as session:
            with pytest.raises(ConflictError):
                await accounts.create_org(session, "acme")
    finally:
        await engine.dispose()


async def test_image_rows_of_older_servers_get_relative_paths(db_url: str, tmp_path: Path) -> None:
    """Rows written with absolute paths under this server's images directory are rewritten
    relative at start (``images/locations.py``); others are left as they are."""
    from voidrun_server.services import images
    from voidrun_server.store.tables import Image

    root = tmp_path / "images"
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        await db.migrate(engine)
        async with db.transaction(sessions) as session:
            for image_id, rootfs, layers in (
                ("a" * 24, f"{root}/orgs/o/a/1/rootfs", None),
                ("b" * 24, f"{root}/orgs/o/b/1/rootfs", [f"{root}/orgs/o/a/1/rootfs"]),
                ("c" * 24, "/elsewhere/rootfs", None),
            ):
                session.add(
                    Image(id=image_id, name=image_id[:1], tag="1", rootfs=rootfs, layers=layers)
                )
        async with db.transaction(sessions) as session:
            await images.sync_system_images(session, root)
        async with sessions() as session:
            rows = {i: await session.get(Image, i * 24) for i in "abc"}
        assert rows["a"] is not None and rows["a"].rootfs == "orgs/o/a/1/rootfs"
        assert rows["b"] is not None and rows["b"].layers == ["orgs/o/a/1/rootfs"]
        assert rows["b"].rootfs == "orgs/o/b/1/rootfs"
        assert rows["c"] is not None and rows["c"].rootfs == "/elsewhere/rootfs"
    finally:
        await engine.dispose()
