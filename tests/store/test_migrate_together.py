"""Replicas and nodes start together: concurrent migrations of one empty database all succeed.

Each migration runs in its own process, as `voidrun-server` replicas do. Without the advisory
lock in ``db.migrate`` two of them race on Alembic's version table on PostgreSQL and one dies
(``relation "alembic_version" already exists``)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import database_url
from voidrun_server.store import db

MIGRATE = (
    "import asyncio, sys\n"
    "from voidrun_server.store import db\n"
    "async def main():\n"
    "    engine = db.create_engine(sys.argv[1])\n"
    "    try:\n"
    "        await db.migrate(engine)\n"
    "    finally:\n"
    "        await engine.dispose()\n"
    "asyncio.run(main())\n"
)


@pytest.mark.postgres
def test_processes_migrating_one_empty_database_at_once_all_succeed(tmp_path: Path) -> None:
    url = database_url("postgres", tmp_path)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATE, url], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr.decode()[-2000:]
    assert asyncio.run(versions(url)) == 1  # one head, recorded once


async def versions(url: str) -> int:
    engine = db.create_engine(url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT version_num FROM alembic_version"))
            return len(rows.all())
    finally:
        await engine.dispose()
