"""Finding programs on a ``PATH``: ``shutil.which``'s rules (without importing ``shutil``) and
the shell's rules for running a command name.
"""

from __future__ import annotations

import os
import stat


def which(cmd: str, path: str | None = None) -> str | None:
    """``shutil.which(cmd, path=path)`` on POSIX, same results."""
    if os.path.dirname(cmd):
        return cmd if _access_check(cmd) else None
    if path is None:
        path = os.environ.get("PATH")
        if path is None:
            try:
                path = os.confstr("CS_PATH")
            except (AttributeError, ValueError):
                path = os.defpath
    if not path:
        return None
    seen = set()
    for directory in path.split(os.pathsep):
        if directory not in seen:
            seen.add(directory)
            name = os.path.join(directory, cmd)
            if _access_check(name):
                return name
    return None


def _access_check(name: str) -> bool:
    return os.path.exists(name) and os.access(name, os.F_OK | os.X_OK) and not os.path.isdir(name)


def find_program(name: str, path: str) -> str | None:
    """Where a shell finds command ``name`` (no ``/`` in it) on ``path``: the first regular file
    that is executable, as ``dir/name``. None if there is none, or if ``path`` has an empty or
    relative entry (those depend on the working directory: left to the shell)."""
    for directory in path.split(":"):
        if not directory.startswith("/"):
            return None
        candidate = directory + name if directory.endswith("/") else f"{directory}/{name}"
        try:
            st = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    return None
