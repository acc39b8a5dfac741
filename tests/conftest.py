"""Shared fixtures: database backends and real server processes.

Store and API tests run once per backend. SQLite always runs; PostgreSQL runs when
``VOIDRUN_TEST_POSTGRES_URL`` points at a server where we may create databases (``make test``
starts one) and is skipped with a reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

POSTGRES_URL = os.environ.get("VOIDRUN_TEST_POSTGRES_URL", "")
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
    if not POSTGRES_URL:
        pytest.skip("VOIDRUN_TEST_POSTGRES_URL not set (make test starts PostgreSQL)")
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
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
