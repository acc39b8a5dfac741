"""Snapshot templates: one booted, idle VM saved once, restored by every clone.

A template is made per *shape*: the image disk, the agent disk, kernel and initramfs, the
accelerator, and the VM's cpu, mem_mb and disk_mb (a migration needs the same machine and
the guest has seen its disks' sizes). It is one cold boot, with its guest RAM in a file
(``memory-backend-file,share=on``), stopped once the agent answered and its host connection
was closed again, then saved: QMP ``migrate`` with ``x-ignore-shared`` writes only device and
CPU state (tens of KiB) to ``state.bin``; the RAM is already in ``ram.img``. Its sandbox disk
(``disk.img``) is kept as it was at that instant: the guest's page cache and ext4 state in
RAM match exactly that disk, so each clone gets a *copy* of it as its own disk and carries
on consistently. The template booted with hostname ``sandbox`` and no environment, never ran
a caller's command, and its disk holds only what the boot wrote: a clone inherits nothing
from another sandbox.

A clone maps the RAM **privately** (``share=off``: copy-on-write, pages it never writes stay
shared with every other clone in the host's page cache). QEMU 7.2 opens a memory backend's
file read-write even for a private mapping, and a QEMU that may write the file could change
every other clone's memory; so the server loads ``ram.img`` once into a memfd sealed against
writes (``F_SEAL_WRITE``: nobody can write it or map it shared-writable, a private mapping is
allowed) and each clone's QEMU inherits that fd and opens ``/proc/self/fd/N``.

Directory ``<state>/templates/<key>/`` (root's, 0700; ``templates/`` is 0711): ``state.bin
ram.img disk.img``; a build happens in ``<key>.build-<pid>/``, renamed into place when done.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voidrun_server.drivers.base import DriverError, DriverTimeoutError
from voidrun_server.drivers.namespace.ready import AgentNotReady, connect_agent_socket

__all__ = ["Template", "TemplateStore", "save_state", "template_key"]

VERSION = 1  # bump when what a template holds changes
KEEP_ON_DISK = 8  # templates kept (least recently used go first: rebuilt when needed again)
KEEP_LOADED = 4  # templates whose RAM this process keeps in memfds
_F_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


@dataclass(frozen=True)
class Template:
    root: Path

    @property
    def key(self) -> str:
        return self.root.name

    @property
    def state(self) -> Path:
        return self.root / "state.bin"

    @property
    def ram(self) -> Path:
        return self.root / "ram.img"

    @property
    def disk(self) -> Path:
        return self.root / "disk.img"


def template_key(parts: dict[str, Any]) -> str:
    """A name for this shape; files are named by path and identified by size and mtime."""
    described = dict(parts, version=VERSION)
    for name, value in parts.items():
        if isinstance(value, Path):
            st = os.stat(value)
            described[name] = [str(value), st.st_size, st.st_mtime_ns]
    blob = json.dumps(described, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class TemplateStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._memfds: dict[tuple[str, int, int, int], int] = {}  # generation -> memfd

    def find(self, key: str) -> Template | None:
        found = Template(self.root / key)
        if not found.state.is_file():
            return None
        with contextlib.suppress(OSError):
            os.utime(found.root)  # its last use, for :meth:`_prune`
        return found

    def _prune(self, keep: str) -> None:
        """At most KEEP_ON_DISK templates: the least recently used others are removed
        (running clones do not need the files; a create that loses the race cold-boots)."""
        found = []
        for entry in self.root.iterdir():
            if entry.name != keep and "." not in entry.name and entry.is_dir():
                with contextlib.suppress(OSError):
                    found.append((entry.stat().st_mtime, entry))
        found.sort()
        for _, entry in found[: max(0, len(found) + 1 - KEEP_ON_DISK)]:
            self.discard(Template(entry))

    def build_dir(self, key: str) -> Path:
        """A fresh, empty directory for building ``key`` (stale builds are removed)."""
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)  # QEMU reaches its build
        os.chmod(self.root, 0o711)
        for stale in self.root.glob(f"{key}.build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        path = self.root / f"{key}.build-{os.getpid()}"
        path.mkdir(mode=0o711)
        return path

    def publish(self, key: str, build: Path) -> Template:
        """Keep the build's state, RAM and disk (root's, read-only) as template ``key``; if
        another process published one meanwhile, that one is kept and this build dropped."""
        for name in ("state.bin", "ram.img", "disk.img"):
            os.chown(build / name, 0, 0)
            os.chmod(build / name, 0o400)
        final = self.root / key
        keep = self.root / f"{key}.keep-{os.getpid()}"
        keep.mkdir(mode=0o700)
        for name in ("state.bin", "ram.img", "disk.img"):
            os.rename(build / name, keep / name)
        shutil.rmtree(build, ignore_errors=True)
        try:
            os.rename(keep, final)  # fails if ``final`` exists (not empty)
        except OSError:
            shutil.rmtree(keep, ignore_errors=True)
        self._prune(keep=key)
        return Template(final)

    @contextlib.contextmanager
    def build_lock(self, key: str) -> Iterator[None]:
        """Across processes sharing this store (blocking: call from a thread)."""
        self.root.mkdir(mode=0o711, parents=True, exist_ok=True)
        with open(self.root / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def discard(self, template: Template) -> None:
        """Drop a template that failed to restore (it is rebuilt on the next create)."""
        for cached in [k for k in self._memfds if k[0] == template.key]:
            os.close(self._memfds.pop(cached))
        shutil.rmtree(template.root, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(self.root / f".{template.key}.lock")

    def open(self, template: Template) -> tuple[int, int, int]:
        """(sealed memfd with the template's RAM, fd of its state file, fd of its disk), all
        of the same generation of the template (the directory is replaced whole when
        rebuilt, and read through one directory fd here; a generation is the state file's
        identity). The memfd is kept for later clones; the caller closes the other two."""
        root = os.open(template.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            state = os.open("state.bin", os.O_RDONLY | os.O_CLOEXEC, dir_fd=root)
            disk = -1
            try:
                disk = os.open("disk.img", os.O_RDONLY | os.O_CLOEXEC, dir_fd=root)
                st = os.fstat(state)  # inode numbers are reused: the time tells builds apart
                generation = (template.key, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
                memfd = self._memfds.pop(generation, None)
                if memfd is None:
                    memfd = _load_ram(template.key, root)
                    self._evict(template.key)
                self._memfds[generation] = memfd  # now the most recently used
            except BaseException:
                os.close(state)
                if disk >= 0:
                    os.close(disk)
                raise
            return memfd, state, disk
        finally:
            os.close(root)

    def _evict(self, key: str) -> None:
        """Room for one more memfd: drop older generations of ``key`` (rebuilt templates) and
        the least recently used beyond KEEP_LOADED. Running clones keep their own mappings."""
        for generation in list(self._memfds):
            if generation[0] == key:
                os.close(self._memfds.pop(generation))
        while len(self._memfds) >= KEEP_LOADED:
            os.close(self._memfds.pop(next(iter(self._memfds))))

    def close(self) -> None:
        for fd in self._memfds.values():
            os.close(fd)
        self._memfds.clear()


def _load_ram(key: str, root: int) -> int:
    """A memfd holding ``ram.img`` (data extents only: holes stay holes), sealed so nobody
    can write it or map it shared-writable; a private mapping is allowed."""
    fd = os.memfd_create(f"voidrun-template-{key}", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        src = os.open("ram.img", os.O_RDONLY | os.O_CLOEXEC, dir_fd=root)
        try:
            size = os.fstat(src).st_size
            os.ftruncate(fd, size)
            _copy_extents(src, fd, size)
        finally:
            os.close(src)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _F_SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _copy_extents(src: int, dst: int, size: int) -> None:
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError:
            return  # ENXIO: only a hole is left
        end = os.lseek(src, start, os.SEEK_HOLE)
        pos = start
        while pos < end:
            chunk = os.pread(src, min(end - pos, 4 << 20), pos)
            if not chunk:
                raise DriverError("short read of a template's RAM file")
            written = 0
            while written < len(chunk):
                written += os.pwrite(dst, chunk[written:], pos + written)
            pos += len(chunk)
        offset = end


# -- saving a template (a tiny blocking QMP client: it must pass an fd with SCM_RIGHTS) -------


class _SyncQmp:
    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = b""
        self.ids = 0

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise DriverTimeoutError("QMP timed out while saving a template")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise DriverError("QEMU closed QMP while saving a template")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        message: dict[str, Any] = json.loads(line)
        return message

    def call(self, command: str, fds: list[int] | None = None, **arguments: Any) -> Any:
        self.ids += 1
        message = {"execute": command, "arguments": arguments, "id": self.ids}
        data = json.dumps(message).encode() + b"\n"
        if fds:
            socket.send_fds(self.sock, [data], fds)
        else:
            self.sock.sendall(data)
        while True:
            reply = self.read()
            if reply.get("id") != self.ids:
                continue
            if "error" in reply:
                raise DriverError(f"QMP {command} failed", str(reply["error"]))
            return reply.get("return")


def save_state(qmp_socket: Path, owner_uid: int, state_file: Path, deadline: float) -> None:
    """Stop the VM and write its device state to ``state_file`` (RAM excluded: it is shared),
    then quit QEMU."""
    while True:
        try:
            sock = connect_agent_socket(qmp_socket, owner_uid=owner_uid)
            break
        except AgentNotReady:
            if time.monotonic() > deadline:
                raise DriverTimeoutError("no QMP socket to save the template") from None
            time.sleep(0.01)
    fd = os.open(state_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with sock:
        qmp = _SyncQmp(sock, deadline)
        qmp.read()  # greeting
        qmp.call("qmp_capabilities")
        qmp.call("stop")
        capabilities = [{"capability": "x-ignore-shared", "state": True}]
        qmp.call("migrate-set-capabilities", capabilities=capabilities)
        try:
            qmp.call("getfd", fds=[fd], fdname="vrstate")
        finally:
            os.close(fd)
        qmp.call("migrate", uri="fd:vrstate")
        while True:
            status = qmp.call("query-migrate").get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled"):
                raise DriverError("saving the template failed", str(status))
            if time.monotonic() > deadline:
                raise DriverTimeoutError("saving the template timed out")
            time.sleep(0.005)
        with contextlib.suppress(DriverError, OSError):
            qmp.call("quit")
