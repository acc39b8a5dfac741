"""File modes of the data dir: secrets 0600, directories traverse-only for other users."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from voidrun_server import datadir
from voidrun_server.config import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    old = os.umask(0o022)
    try:
        assert datadir.prepare(settings) == []
    finally:
        os.umask(old)
    assert mode(settings.data_dir) == 0o711
    assert mode(settings.sandboxes_dir) == 0o711
    database = datadir.sqlite_path(settings)
    assert database is not None and mode(database) == 0o600
    # SQLite gives its WAL and shared-memory files the database's own mode.
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        assert mode(Path(f"{database}-wal")) == 0o600


def test_loose_modes_are_fixed_and_reported(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.sandboxes_dir.mkdir(parents=True)
    os.chmod(settings.data_dir, 0o755)
    os.chmod(settings.sandboxes_dir, 0o777)
    database = datadir.sqlite_path(settings)
    assert database is not None
    database.write_text("")
    os.chmod(database, 0o644)
    settings.bootstrap_key_file.write_text("vr_x")
    os.chmod(settings.bootstrap_key_file, 0o640)
    fixed = datadir.prepare(settings)
    assert len(fixed) == 4, fixed
    assert mode(settings.data_dir) == 0o711
    assert mode(settings.sandboxes_dir) == 0o711
    assert mode(database) == 0o600
    assert mode(settings.bootstrap_key_file) == 0o600
    assert datadir.prepare(settings) == []  # idempotent


def test_modes_are_only_ever_tightened(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir()
    os.chmod(settings.data_dir, 0o700)  # stricter than needed: leave it (the operator chose)
    datadir.prepare(settings)
    assert mode(settings.data_dir) == 0o700
