"""The driver's side of the agent fork server (``voidrun_agent.zygote``).

One zygote per driver: a child process of the server running the agent's bundled interpreter
with every agent module loaded. :meth:`Zygote.fork_agent` asks it for a new agent inside a
sandbox whose namespaces bwrap has just built; see the agent module for what the child does
before it runs agent code, and ``launch.py`` for how the sandbox's PID 1 is made to wait for it.

The zygote is started on first use and again whenever it is found dead; a request has a
deadline, and a zygote that misses one is killed (the next request starts a fresh one). It
exits by itself when the server's end of its socket closes, so a server that dies takes it
along (agents it forked live on: they belong to their sandboxes).
"""

from __future__ import annotations

import array
import json
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voidrun_server.drivers.base import DriverError, DriverTimeoutError

__all__ = ["Zygote", "ZygoteConfig", "capability_mask"]

_CAPABILITIES = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_SYS_CHROOT": 18,
    "CAP_MKNOD": 27,
    "CAP_AUDIT_WRITE": 29,
    "CAP_SETFCAP": 31,
}


def capability_mask(names: Sequence[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << _CAPABILITIES[name]
    return mask


@dataclass(frozen=True)
class ZygoteConfig:
    """``home``: the agent's interpreter bundle on the host (``bin/python3``, ``lib/``);
    ``agent_dir``: the installed agent package on the host; ``holder``: the sandbox's PID 1
    (in-sandbox paths); ``sys_path``: the agent package's in-sandbox directory, then the
    interpreter's in-sandbox module directories."""

    home: str
    agent_dir: str
    holder: tuple[str, ...]
    sys_path: tuple[str, ...]


# Every forked agent shows the zygote's command line to the sandbox (``/proc/N/cmdline`` is
# world-readable, and rewriting it needs CAP_SYS_RESOURCE), so it names no host path: those
# travel in the environment, which only the process itself and the host can read. No -I/-E:
# PYTHONHOME must place the standard library (the environment is entirely ours).
_COMMAND = ("voidrun-agent", "-S", "-s", "-c", "import os; exec(os.environ['VOIDRUN_ZYGOTE'])")


def bootstrap(agent_dir: str) -> str:
    """Python code that imports the installed agent copy at ``agent_dir`` as ``voidrun_agent``
    and runs the zygote (``-I -S``: nothing of the host's Python configuration)."""
    return (
        "import sys, importlib.util as u; sys.path.remove('') if '' in sys.path else None; "
        f"d = {agent_dir!r}; "
        "s = u.spec_from_file_location('voidrun_agent', d + '/__init__.py', "
        "submodule_search_locations=[d]); "
        "m = u.module_from_spec(s); sys.modules['voidrun_agent'] = m; s.loader.exec_module(m); "
        "from voidrun_agent.zygote import main; sys.exit(main(os.environ))"
    )


class Zygote:
    def __init__(self, config: ZygoteConfig, state_dir: Path, bpf: bytes, caps: int) -> None:
        self.config = config
        self._dir = state_dir
        self._bpf = bpf
        self._caps = caps
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def fork_agent(
        self, request: dict[str, Any], fds: tuple[int, int, int], deadline: float
    ) -> int:
        """The new agent's host pid. ``fds``: the life line's write end, the log file and
        the holder's echo (the child keeps them; the caller still closes its own copies).
        Blocking."""
        payload = json.dumps(request).encode()
        with self._lock:
            sock = self._ensure()
            try:
                sock.sendmsg(
                    [payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
                answer = self._answer(sock, deadline)
            except (OSError, ValueError, DriverTimeoutError) as exc:
                self._kill()
                if isinstance(exc, DriverTimeoutError):
                    raise
                raise DriverError("the agent fork server failed", str(exc)) from exc
        if "error" in answer:
            raise DriverError("could not start the agent", str(answer["error"]))
        return int(answer["pid"])

    def start(self) -> None:
        """Start it now (its imports take a while), so the first sandbox does not wait."""
        with self._lock:
            self._ensure()

    def close(self) -> None:
        with self._lock:
            self._kill()

    def _answer(self, sock: socket.socket, deadline: float) -> dict[str, Any]:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            raise DriverTimeoutError("the agent fork server did not answer in time")
        data = sock.recv(4096)
        if not data:
            raise ValueError("the fork server exited")
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise ValueError("malformed answer")
        return answer

    def _ensure(self) -> socket.socket:
        if self._proc is not None and self._proc.poll() is None and self._sock is not None:
            return self._sock
        self._kill()
        program = self._dir / ".seccomp.bpf"
        tmp = program.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self._bpf)
        os.replace(tmp, program)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        log = os.open(
            self._dir / ".zygote.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            self._proc = subprocess.Popen(
                _COMMAND,
                executable=f"{self.config.home}/bin/python3",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
                env={
                    "PYTHONHOME": self.config.home,
                    "PYTHONDONTWRITEBYTECODE": "1",
                    "LD_LIBRARY_PATH": f"{self.config.home}/lib",
                    "VOIDRUN_ZYGOTE": bootstrap(self.config.agent_dir),
                    "VOIDRUN_ZYGOTE_SOCKET": str(theirs.fileno()),
                    "VOIDRUN_ZYGOTE_SECCOMP": str(program),
                    "VOIDRUN_ZYGOTE_CAPS": hex(self._caps),
                },
                cwd="/",
            )
        except OSError as exc:
            ours.close()
            raise DriverError("cannot start the agent fork server", str(exc)) from exc
        finally:
            theirs.close()
            os.close(log)
        self._sock = ours
        return ours

    def _kill(self) -> None:
        if self._sock is not None:
            self._sock.close()  # the zygote exits on EOF
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
