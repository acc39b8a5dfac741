"""The Unix socket listener and the agent's life: start, serve connections, stop on SIGTERM.

Each accepted connection is served by its own task (``connection.Connection``). On SIGTERM the
agent stops accepting, ends every connection (which cancels their requests), kills every
command's process group, and removes its socket.
"""

from __future__ import annotations

import _socket
import errno
import os
import stat

from . import log
from .connection import Connection
from .context import AgentContext, kill_group
from .fdio import Fd
from .loop import get_loop
from .protocol import PROTOCOL_VERSION
from .reaper import Reaper
from .sync import Event
from .tasks import Task, wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from typing import Mapping
else:
    import _signal

SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes including the NUL
BACKLOG = 128
# accept() errors that mean "out of resources for now": retry after a pause, as asyncio does.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY = 1.0


def bind_unix(path: str) -> _socket.socket:
    """Listen at ``path``, replacing a stale socket, readable by the owner only.

    Paths longer than sun_path are bound through /proc/self/fd/<dirfd>/<name>.
    """
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # no window in which the socket is open to others
    dir_fd = -1
    try:
        address = path
        if len(os.fsencode(path)) > SUN_PATH_MAX:
            dir_fd = os.open(parent, os.O_PATH | os.O_CLOEXEC)
            address = f"/proc/self/fd/{dir_fd}/{name}"
        sock.bind(address)
        _owner_only(path)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
        if dir_fd >= 0:
            os.close(dir_fd)
    return sock


def _owner_only(path: str) -> None:
    """chmod 0600. gVisor's host-backed sockets (``runsc --host-uds=create``) refuse chmod and
    even lstat with EPERM; the umask set before ``bind`` already made the socket owner-only."""
    try:
        os.chmod(path, 0o600)
    except PermissionError:
        pass


class Listener:
    """Accepts connections on a listening socket and serves each in a task."""

    def __init__(self, ctx: AgentContext, sock: _socket.socket) -> None:
        self._ctx = ctx
        self._sock = sock
        self.connections: set[Task[None]] = set()
        self._fd = Fd(sock.fileno(), on_readable=self._accept)

    def _accept(self) -> None:
        while not self._fd.closed:
            try:
                # socket.socket.accept() minus the object: accept4(), close-on-exec
                fd, _ = self._sock._accept()  # type: ignore[attr-defined]
            except BlockingIOError:
                self._fd.readable = False
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in RESOURCE_ERRNOS:
                    log.warning("cannot accept a connection: %s; retrying in 1s", exc)
                    get_loop().call_later(ACCEPT_RETRY, self._accept)
                    return
                continue  # ECONNABORTED and the like: that client is gone
            task = Task(self._serve(fd))
            self.connections.add(task)
            task.add_done_callback(self.connections.discard)

    async def _serve(self, fd: int) -> None:
        try:
            connection = Connection(self._ctx, fd)
        except OSError:
            os.close(fd)
            return
        await connection.serve()

    def close(self) -> None:
        self._fd.close()
        self._sock.detach()  # the fd is closed already


async def serve(
    socket_path: str,
    base_env: Mapping[str, str],
    serial: bool = False,
    control: str | None = None,
) -> int:
    """Run the agent until SIGTERM; then kill every command and remove the socket.

    With ``serial``, ``socket_path`` is a character device (a microVM's virtio-serial port)
    whose one host connection is served at a time (``serial.py``); ``control`` is a second
    such port, served the same way, polled for a host less often."""
    loop = get_loop()
    reaper = Reaper()
    reaper.install()
    ctx = AgentContext(base_env, reaper)
    stop = Event()
    loop.add_signal_handler(_signal.SIGTERM, stop.set)
    for noise in (_signal.SIGINT, _signal.SIGHUP):
        # A handler rather than SIG_IGN: ignored signals would stay ignored in every command.
        loop.add_signal_handler(noise, _ignore)

    if serial:
        from .serial import CONTROL_POLL, serve_port

        ports = [Task(serve_port(ctx, socket_path, stop))]
        ports[0].add_done_callback(lambda _: stop.set())  # the device failed: nothing to serve
        if control:
            ports.append(Task(serve_port(ctx, control, stop, poll=CONTROL_POLL)))
        log.info("serving %s (protocol %d, pid %d)", socket_path, PROTOCOL_VERSION, os.getpid())
        try:
            await stop.wait()
        finally:
            for port in ports:
                port.cancel()
            await wait(ports)
            _kill_everything(ctx)
        log.info("stopped")
        return 0
    sock = bind_unix(socket_path)
    inode = _socket_inode(socket_path)
    listener = Listener(ctx, sock)
    log.info("listening on %s (protocol %d, pid %d)", socket_path, PROTOCOL_VERSION, os.getpid())
    try:
        await stop.wait()
    finally:
        listener.close()
        connections = list(listener.connections)
        for task in connections:
            task.cancel()
        if connections:
            await wait(connections)
        _kill_everything(ctx)
        try:
            if inode is not None and os.stat(socket_path).st_ino == inode:
                os.unlink(socket_path)
        except OSError:
            pass
    log.info("stopped")
    return 0


def _socket_inode(path: str) -> "int | None":
    """The bound socket's inode; None where the file system refuses to stat it (gVisor's
    host-backed sockets: the host side removes those)."""
    try:
        return os.stat(path).st_ino
    except PermissionError:
        return None


def _kill_everything(ctx: AgentContext) -> None:
    for pgid in list(ctx.groups):
        kill_group(pgid)
    if os.getpid() == 1:
        try:
            os.kill(-1, _signal.SIGKILL)  # as init: everything left in the namespace
        except ProcessLookupError:
            pass


def _ignore() -> None:
    pass
