"""Shared fixtures: database backends and real server processes; the test-tier hooks.

Tests that use ``db_url`` or the ``server`` fixture below run once per backend. SQLite always
runs; PostgreSQL runs when ``VOIDRUN_TEST_POSTGRES_URL`` points at a server where we may create
databases (``make test`` starts one). Without it those runs are a ``postgres`` tier skip, which
fails the run unless ``VOIDRUN_TEST_SKIP_TIERS`` names ``postgres`` (see tests/support/tiers.py).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess
from tests.support.tiers import skip_if_opted_out, skip_tier

pytest_plugins = ["tests.support.tier_plugin", "tests.support.leak_plugin"]

POSTGRES_URL = os.environ.get("VOIDRUN_TEST_POSTGRES_URL", "")
HEAVY = os.environ.get("VOIDRUN_TEST_HEAVY", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``heavy`` tests (whole suites again through another path) run only with
    ``VOIDRUN_TEST_HEAVY=1`` (``make test-heavy``): deselected, not skipped, so they are no
    tier's skip."""
    if HEAVY:
        return
    heavy = [item for item in items if item.get_closest_marker("heavy") is not None]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if item.get_closest_marker("heavy") is None]


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _create_pg_database() -> str:
    import asyncpg  # type: ignore[import-untyped]

    name = f"voidrun_test_{secrets.token_hex(4)}"
    admin_url = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://")

    async def create() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


def database_url(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'voidrun.db'}"
    skip_if_opted_out("postgres")
    if not POSTGRES_URL:
        skip_tier("postgres", "VOIDRUN_TEST_POSTGRES_URL is not set (make test starts PostgreSQL)")
    return _create_pg_database()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request.param, tmp_path)


@pytest.fixture(scope="module", params=BACKENDS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One real server per backend per test module."""
    data_dir = tmp_path_factory.mktemp("server")
    proc = ServerProcess(data_dir=data_dir, database_url=database_url(request.param, data_dir))
    try:
        proc.start()
        yield proc
    finally:
        proc.stop_and_purge()
