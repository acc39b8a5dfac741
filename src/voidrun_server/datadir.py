"""The data dir's file modes: what other local users may see of it.

Sandboxes run as unprivileged host uids that must *traverse* the data dir to reach their own
disks, so the data dir and ``sandboxes/`` are 0711 (enter, never list). Everything that holds
secrets — the SQLite database (every org's ``envVars`` and key digests) with its WAL and
shared-memory files, the bootstrap key — is 0600. Each start checks these modes, fixes what is
looser, and says so loudly: a data dir restored from a backup or created by hand must not stay
readable by every local user.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)

TRAVERSE_ONLY = 0o711
PRIVATE = 0o600
SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def sqlite_path(settings: Settings) -> Path | None:
    """The SQLite database file, when the server uses one."""
    url = settings.resolved_database_url
    prefix = "sqlite+aiosqlite:///"
    if not url.startswith(prefix) or ":memory:" in url:
        return None
    return Path(url[len(prefix) :])


def prepare(settings: Settings) -> list[str]:
    """Create the data dir and tighten modes; return what had to be fixed (also logged)."""
    fixed: list[str] = []
    for directory in (settings.data_dir, settings.sandboxes_dir):
        if not directory.exists():
            directory.mkdir(parents=True)
            os.chmod(directory, TRAVERSE_ONLY)
        _at_most(directory, TRAVERSE_ONLY, fixed)
    database = sqlite_path(settings)
    if database is not None and not database.exists():
        database.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, PRIVATE))
    secrets = [settings.bootstrap_key_file]
    if database is not None:  # SQLite gives the WAL and shm files the database's mode
        secrets += [Path(f"{database}{suffix}") for suffix in SQLITE_SUFFIXES]
    for path in secrets:
        _at_most(path, PRIVATE, fixed)
    for message in fixed:
        log.warning("data dir: %s", message)
    return fixed


def _at_most(path: Path, mode: int, fixed: list[str]) -> None:
    """Remove every permission bit of ``path`` not in ``mode`` (never adds any)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        fixed.append(f"{path} is a symlink; not following it (check where it points)")
        return
    current = stat.S_IMODE(st.st_mode)
    if current & ~mode:
        os.chmod(path, current & mode)
        fixed.append(
            f"{path} was {current:04o}, now {current & mode:04o}: it was readable by others"
        )
