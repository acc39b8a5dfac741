"""Connections to ports inside a sandbox, for the preview proxy (``PortOpener``).

Nothing on the host can reach a sandbox's servers: they listen in the sandbox's own network
namespace (often on its 127.0.0.1 only, as ``npm run dev`` does). The server reaches them the
way a process inside would, without exposing them to anything else:

* A socket belongs to the network namespace of the thread that created it, for its whole life,
  and the network namespace is per thread. So one dedicated thread enters the namespace of the
  sandbox's first process (``setns`` on a pidfd, race-free against pid reuse: the process is
  pinned before its start time is checked), creates the socket, begins a non-blocking connect
  to 127.0.0.1 (::1 when that is refused), and returns to the host's namespace (its fd is kept
  open). Python 3.11 has no ``os.setns``: libc's, through ctypes.
* The thread does nothing else, and every job enters its target namespace first, so the host
  never runs other work in a sandbox's namespace even if returning failed. Each job takes
  microseconds (no blocking call: the connect is non-blocking); the event loop waits for the
  connect to finish under the caller's deadline.
* "The namespace the sandbox's processes are in" (``/proc/<pid>/ns/net``) stays right however
  the namespace was made (by bubblewrap today, by the host for egress later).

The init process of each sandbox is cached (pid and start time, checked on every use), so the
hot path reads no file but ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
from concurrent.futures import ThreadPoolExecutor

import anyio

from voidrun_server.drivers.base import (
    DriverError,
    DriverTimeoutError,
    PortClosedError,
    SandboxStateError,
)
from voidrun_server.drivers.namespace.host import SandboxHost
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.state import Phase, RunDir, read_record

__all__ = ["NetnsPorts", "SandboxPorts"]

CLONE_NEWNET = 0x40000000
_CACHE_LIMIT = 4096
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int, nstype: int) -> None:
    if _libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def _connect(family: int, address: tuple[str, int]) -> socket.socket:
    """A non-blocking socket of the current thread's namespace, its connect begun."""
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.setblocking(False)
    code = sock.connect_ex(address)
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        raise OSError(code, os.strerror(code))
    return sock


class SandboxPorts:
    """Opens connections into sandboxes' network namespaces (see the module docstring)."""

    def __init__(self, host: SandboxHost) -> None:
        self._host = host
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voidrun-netns")
        self._home: int | None = None  # the thread's own (host) namespace; used there only
        self._inits: dict[str, ProcessRef] = {}  # touched on the event loop only

    async def open(self, sandbox_id: str, port: int, within: float) -> socket.socket:
        if not 1 <= port <= 65535:
            raise DriverError("invalid port", f"{port} is not in 1..65535")
        run = self._host.run_dir(sandbox_id)
        try:
            with anyio.fail_after(within):
                try:
                    return await self._open(run, port, socket.AF_INET)
                except ConnectionRefusedError:
                    try:  # a server on ::1 only (IPv6 may be off inside: refused it is then)
                        return await self._open(run, port, socket.AF_INET6)
                    except OSError:
                        pass
                    raise
        except TimeoutError as exc:
            raise DriverTimeoutError(
                f"port {port} in the sandbox did not accept a connection in time",
                f"after {within:.1f}s",
            ) from exc
        except ConnectionRefusedError as exc:
            raise PortClosedError(
                f"nothing listens on port {port} in the sandbox",
                "start a server on that port inside the sandbox (on 0.0.0.0 or 127.0.0.1)",
            ) from exc
        except ProcessLookupError as exc:
            self._inits.pop(sandbox_id, None)
            raise SandboxStateError("the sandbox is not running", sandbox_id) from exc
        except OSError as exc:
            raise DriverError(f"could not connect to port {port} in the sandbox", str(exc)) from exc

    async def _open(self, run: RunDir, port: int, family: int) -> socket.socket:
        job = self._thread.submit(self._dial, run, self._inits.get(run.sandbox_id), port, family)
        with anyio.CancelScope(shield=True):  # microseconds; the socket must not leak
            sock, init = await asyncio.wrap_future(job)
        if len(self._inits) >= _CACHE_LIMIT:
            self._inits.clear()
        self._inits[run.sandbox_id] = init
        try:
            await anyio.wait_writable(sock)  # the connect finishes (or fails) in the sandbox
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))  # ECONNREFUSED: ConnectionRefusedError
        except BaseException:
            sock.close()
            raise
        return sock

    # -- on the dedicated thread -------------------------------------------------------------

    def _dial(
        self, run: RunDir, init: ProcessRef | None, port: int, family: int
    ) -> tuple[socket.socket, ProcessRef]:
        if self._home is None:
            self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        if init is None or not init.alive():
            record = read_record(run)
            if record is None or record.phase is Phase.STOPPED or record.init is None:
                raise ProcessLookupError(run.sandbox_id)
            init = record.init
        pidfd = os.pidfd_open(init.pid)  # pins the process: the check below cannot go stale
        try:
            if not init.alive():
                raise ProcessLookupError(run.sandbox_id)
            _setns(pidfd, CLONE_NEWNET)
            try:
                loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
                return _connect(family, (loopback, port)), init
            finally:
                _setns(self._home, CLONE_NEWNET)
        finally:
            os.close(pidfd)


class NetnsPorts:
    """``PortOpener`` for :class:`NamespaceDriver` (a mixin: it needs only ``_host``)."""

    _host: SandboxHost
    _sandbox_ports: SandboxPorts | None = None

    async def open_port(self, sandbox_id: str, port: int, *, within: float) -> socket.socket:
        if self._sandbox_ports is None:
            self._sandbox_ports = SandboxPorts(self._host)
        return await self._sandbox_ports.open(sandbox_id, port, within)
