"""Quota checks on every backend: concurrent creates never overshoot an org's quota."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from voidrun_server import ids
from voidrun_server.config import Settings
from voidrun_server.errors import QuotaExceededError
from voidrun_server.services import accounts, quotas
from voidrun_server.store import db
from voidrun_server.store.repos.quotas import Usage
from voidrun_server.store.tables import Sandbox


def sandbox_row(org_id: str, status: str = "running", cpu: int = 1) -> Sandbox:
    return Sandbox(
        id=ids.new_id(),
        org_id=org_id,
        created_by="u" * 24,
        name="box",
        image="code:1",
        cpu=cpu,
        mem=1024,
        disk_mb=256,
        status=status,
    )


async def test_concurrent_creates_do_not_overshoot(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, org_max_sandboxes=3)
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        await db.migrate(engine)
        async with db.transaction(sessions) as session:
            org = await accounts.create_org(session, "acme")
        outcomes: list[str] = []

        async def create() -> None:
            wanted = Usage(sandboxes=1, cpu=1, mem_mb=1024, disk_mb=256)
            try:
                async with db.transaction(sessions) as session:
                    await quotas.check(session, settings, org.id, wanted, Usage())
                    await anyio.sleep(0.05)  # widen the window between check and insert
                    session.add(sandbox_row(org.id))
                outcomes.append("created")
            except QuotaExceededError as exc:
                assert exc.details and "sandboxes quota of org 'acme'" in exc.details
                outcomes.append("refused")

        async with anyio.create_task_group() as tasks:
            for _ in range(8):
                tasks.start_soon(create)
        assert sorted(outcomes) == ["created"] * 3 + ["refused"] * 5
        async with sessions() as session:
            assert (await quotas.usage(session, org.id)).sandboxes == 3
    finally:
        await engine.dispose()


async def test_which_states_count(db_url: str, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, org_max_cpu=4)
    engine = db.create_engine(db_url)
    sessions = db.session_factory(engine)
    try:
        await db.migrate(engine)
        async with db.transaction(sessions) as session:
            org = await accounts.create_org(session, "acme")
            for status in ("running", "paused", "stopped", "error", "deleted"):
                session.add(sandbox_row(org.id, status, cpu=2))
        async with sessions() as session:
            used = await quotas.usage(session, org.id)
        # cpu/mem: running + paused; count and disk: everything not deleted.
        assert used == Usage(sandboxes=4, cpu=4, mem_mb=2048, disk_mb=1024)
        async with db.transaction(sessions) as session:
            with pytest.raises(QuotaExceededError) as refused:
                await quotas.check(session, settings, org.id, Usage(cpu=1), Usage())
        details = refused.value.details or ""
        assert "4 in use + 1 requested > limit 4" in details
        assert "voidrun-server orgs quota acme --cpu N" in details
        async with db.transaction(sessions) as session:
            the_org = await accounts.org_named(session, "acme")
            await quotas.set_quota(
                session, the_org, max_sandboxes=None, cpu=5, mem_mb=None, disk_mb=None, reset=False
            )
        async with db.transaction(sessions) as session:
            await quotas.check(session, settings, org.id, Usage(cpu=1), Usage())
            # In-flight starts of this process count too.
            with pytest.raises(QuotaExceededError):
                await quotas.check(session, settings, org.id, Usage(cpu=1), Usage(cpu=1))
    finally:
        await engine.dispose()
