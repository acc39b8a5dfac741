"""State shared by every connection: environment, reaper, running process groups.

It lives for the agent's whole life, not a connection's, so a server that reconnects (after a
restart) finds the environment it pushed earlier still in force.
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, Mapping, Set

from .reaper import Reaper

BASE_ENV: Dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "xterm-256color",
}

DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024


class AgentContext:
    def __init__(self, base_env: Mapping[str, str], reaper: Reaper) -> None:
        self.base_env = dict(base_env)
        self.defaults: Dict[str, str] = {}
        self.reaper = reaper
        # Process groups of commands still running, so shutdown can kill them.
        self.groups: Set[int] = set()
        self.shell = find_shell(self.base_env.get("PATH", BASE_ENV["PATH"]))

    def exec_env(self, extra: Mapping[str, str]) -> Dict[str, str]:
        """Request env over ``env.set`` defaults over the base env."""
        env = dict(self.base_env)
        env.update(self.defaults)
        env.update(extra)
        return env


def find_shell(path: str) -> str:
    """bash when the image has it, else POSIX sh (minimal images such as Alpine or busybox)."""
    return shutil.which("bash", path=path) or "/bin/sh"


def default_cwd(env: Mapping[str, str]) -> str:
    """HOME if it exists: a fresh image may lack /root, and that must not break every exec."""
    home = env.get("HOME", "")
    return home if home.startswith("/") and os.path.isdir(home) else "/"
