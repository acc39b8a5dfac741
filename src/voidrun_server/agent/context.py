"""State shared by every connection: environment, reaper, running process groups, and the state
of each op family (background commands, shells, terminals), created on the family's first use.

It lives for the agent's whole life, not a connection's, so a server that reconnects (after a
restart) finds the environment it pushed earlier, and the commands it started, still there.
"""

from __future__ import annotations

import os

from .paths import which
from .protocol import SPAWN_FAILED, OpError
from .reaper import Reaper
from .spawn import spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Sequence, TypeVar

    from .futures import Future

    S = TypeVar("S")
    import signal as _signal
else:
    import _signal

BASE_ENV: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "xterm-256color",
}

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


class AgentContext:
    def __init__(self, base_env: Mapping[str, str], reaper: Reaper) -> None:
        self.base_env = dict(base_env)
        self.defaults: dict[str, str] = {}
        self.reaper = reaper
        # Process groups of commands still running, so shutdown can kill them.
        self.groups: set[int] = set()
        self.shell = find_shell(self.base_env.get("PATH", BASE_ENV["PATH"]))
        """bash or sh from the image, None when it has neither (asked again on each use)."""
        self._families: dict[Any, Any] = {}

    def exec_env(self, extra: Mapping[str, str]) -> dict[str, str]:
        """Request env over ``env.set`` defaults over the base env."""
        env = dict(self.base_env)
        env.update(self.defaults)
        env.update(extra)
        return env

    def need_shell(self, runs: str) -> str:
        """The image's shell, or an error saying that ``runs`` (what the feature starts, such as
        ``sh -c COMMAND``) needs one and what to install. Looked up again while there is none,
        so a shell installed later (an uploaded busybox) is found."""
        if self.shell is None:
            self.shell = find_shell(self.base_env.get("PATH", BASE_ENV["PATH"]))
        if self.shell is None:
            raise OpError(SPAWN_FAILED, no_shell(runs))
        return self.shell

    def family(self, factory: Callable[[AgentContext], S]) -> S:
        """The agent's one instance of an op family's state (``Commands``, ``Shells``, …)."""
        found: S | None = self._families.get(factory)
        if found is None:
            found = self._families[factory] = factory(self)
        return found

    def start(
        self,
        argv: Sequence[str],
        executable: str,
        env: Mapping[str, str],
        cwd: str,
        fds: tuple[int, int, int],
        preexec: Callable[[], None] | None = None,
        creds: tuple[int, list[int], int] | None = None,
    ) -> tuple[int, Future[int]]:
        """Start a program in a new session (see ``spawn``); return its pid and the future of its
        exit code. Its group is killed at shutdown until :meth:`finished` is called."""
        self.reaper.adopt_orphans()
        pid = spawn(argv, executable, env, cwd, *fds, preexec=preexec, creds=creds)
        exited = self.reaper.watch(pid)  # before the loop can reap it
        self.groups.add(pid)
        return pid, exited

    def finished(self, pid: int) -> None:
        self.groups.discard(pid)
        self.reaper.forget(pid)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, _signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def find_shell(path: str) -> str | None:
    """bash when the image has it, else POSIX sh (minimal images such as Alpine or busybox):
    ``/bin/sh``, or ``sh`` on ``path``. None when the image has no shell (distroless)."""
    return which("bash", path=path) or which("/bin/sh") or which("sh", path=path)


def no_shell(runs: str) -> str:
    return (
        f"this image has no shell (no bash on PATH, no /bin/sh) and this runs {runs}: install "
        "bash, or a POSIX sh such as busybox or dash as /bin/sh, in the image"
    )


def default_cwd(env: Mapping[str, str]) -> str:
    """HOME if it exists: a fresh image may lack /root, and that must not break every exec."""
    home = env.get("HOME", "")
    return home if home.startswith("/") and os.path.isdir(home) else "/"
