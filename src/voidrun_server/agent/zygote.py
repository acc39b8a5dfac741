"""The agent's fork server: one warm interpreter on the host that forks each sandbox's agent.

Starting a Python interpreter costs 15-25 ms on a small host, most of a cold create. So the
driver starts this module once (on the agent's own bundled runtime, with a clean environment)
and, for each sandbox, bwrap builds the namespaces around a trivial PID 1 and this process forks
a child that *joins* them and becomes the agent: no exec, no import, the interpreter and every
op family are already loaded (shared copy-on-write with this process, so an idle agent's own
memory is what it wrote since the fork).

The child is born in the sandbox's PID namespace (the zygote points its children's PID
namespace there with ``setns`` before forking; the driver asks as soon as bwrap has made that
namespace, while bwrap still builds the sandbox's mounts), then, before running a single line
of agent code, it moves itself into the sandbox's cgroups, waits for the holder's echo (bwrap
has finished the mounts and exec'd the sandbox's PID 1), joins the network, UTS, IPC, cgroup,
mount and user namespaces (in that order: the network namespace belongs to the host's user
namespace), becomes the namespace's root, keeps only the capability set bwrap gives the
sandbox (bounding, permitted, effective; nothing inheritable or ambient), sets no_new_privs,
loads the sandbox's seccomp filter (last: it denies ``setns``), starts a new session and closes
every descriptor but its log and the sandbox's life line. A failure at any step ends the child
before it could run agent code, with the reason in the sandbox's log.

The life line: bwrap's PID 1 is ``cat`` reading a pipe whose only writer is the agent. When the
agent dies, ``cat`` reads EOF and exits, and the kernel ends every process of the PID namespace:
the sandbox lives exactly as long as its agent, as it did when the agent was PID 1.

Protocol (a SOCK_SEQPACKET pair with the driver): each request is one JSON object with three
descriptors attached (the life line's write end, the log file, the read end of the holder's
echo); the answer is one JSON object,
``{"pid": N}`` (the child's host pid) or ``{"error": "..."}``. Requests are served one at a
time; a fork costs about a millisecond.

This module runs as root on the host, so it trusts only the driver's socket (its stdin) and
never reads anything a sandbox wrote.
"""

from __future__ import annotations

import gc
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Mapping, Tuple

# clone(2) flags, as setns(2) takes them
_NAMESPACES = (
    ("net", 0x40000000),
    ("uts", 0x04000000),
    ("ipc", 0x08000000),
    ("cgroup", 0x02000000),
    ("mnt", 0x00020000),
    ("user", 0x10000000),
)
_CLONE_NEWPID = 0x20000000
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_SECCOMP = 22
_PR_CAPBSET_DROP = 24
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_NAME = 15
_SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_MAX_REQUEST = 1 << 16
_LAST_CAP = 40  # read from the host's /proc at start (the sandbox's /proc is not trusted)


class SetupError(Exception):
    pass


class _Native:
    """libc and the C structures the child needs, made once in the zygote (not per fork)."""

    def __init__(self, program: bytes, keep: int) -> None:
        import ctypes

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [
                ("effective", ctypes.c_uint32),
                ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32),
            ]

        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        if not program or len(program) % 8:
            raise SetupError("the seccomp program is empty or malformed")
        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.keep = keep
        self.cap_header = Header(_LINUX_CAPABILITY_VERSION_3, 0)
        low, high = keep & 0xFFFFFFFF, keep >> 32
        self.cap_data = (Data * 2)(Data(low, low, 0), Data(high, high, 0))
        self._filter = ctypes.create_string_buffer(program, len(program))
        self.fprog = Fprog(len(program) // 8, ctypes.cast(self._filter, ctypes.c_void_p))

    def check(self, result: int, what: str) -> None:
        if result != 0:
            raise SetupError(f"{what}: {os.strerror(self.ctypes.get_errno())}")

    def set_capabilities(self) -> None:
        """Bounding set, then permitted = effective = ``keep``; inheritable, ambient empty."""
        prctl = self.libc.prctl
        for cap in range(_LAST_CAP + 1):
            if not self.keep & (1 << cap):
                self.check(prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap}")
        self.check(prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "ambient")
        byref = self.ctypes.byref
        self.check(self.libc.capset(byref(self.cap_header), self.cap_data), "capset")

    def load_seccomp(self) -> None:
        prctl = self.libc.prctl
        self.check(prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
        filter_mode = _SECCOMP_MODE_FILTER
        self.check(
            prctl(_PR_SET_SECCOMP, filter_mode, self.ctypes.byref(self.fprog), 0, 0), "seccomp"
        )


def _enter(native: _Native, request: Dict[str, Any], life: int, ready: int) -> None:
    """In the forked child: become the sandbox's root inside all its namespaces."""
    os.setgroups([])
    for path in request["cgroups"]:  # "0": the writer moves itself (v1 `tasks`, v2 procs)
        with open(path, "w") as fh:
            fh.write("0")
    if not os.read(ready, 1):  # blocks until the holder runs: the namespaces are complete
        raise SetupError("bubblewrap exited before starting the sandbox")
    os.close(ready)
    pid = int(request["init"])
    fds = [(os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC), flag, name)
           for name, flag in _NAMESPACES]  # fmt: skip
    if _start_time(pid) != request["init_start"]:
        raise SetupError("the sandbox's pid 1 is gone")
    for fd, flag, name in fds:
        native.check(native.libc.setns(fd, flag), f"joining the {name} namespace")
        os.close(fd)
    os.chdir("/")
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    native.set_capabilities()
    native.load_seccomp()
    os.setsid()
    os.closerange(3, life)
    os.closerange(life + 1, 1 << 20)


def _start_time(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        stat = fh.read()
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def _child(request: Dict[str, Any], fds: List[int], native: _Native) -> None:
    """Never returns: runs the agent, or exits 111 after printing why it could not."""
    life, log, ready = fds
    code = 111
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.close(log)
        native.libc.prctl(_PR_SET_NAME, b"voidrun-agent", 0, 0, 0)
        _enter(native, request, life, ready)
        _relocate(request["paths"])
        os.environ.clear()
        os.environ.update(request["environ"])
        from .__main__ import main

        code = main(request["argv"])
    except BaseException as exc:  # noqa: BLE001 - the child must never return to the zygote
        try:
            os.write(2, f"voidrun-agent: cannot start: {exc}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)


def _relocate(paths: List[str]) -> None:
    """Later imports (an encoding a zip file names, say) resolve in the sandbox's read-only
    mounts: the module path, and every loaded package's own path, move from the host's
    directories (gone after the mount namespace changed) to the mounted copies. The new paths
    are worked out once in the zygote (``_relocations``): the child only assigns them."""
    sys.path[:] = paths[1:]
    sys.path_importer_cache.clear()
    for where, moved in _relocations(tuple(paths)):
        where[:] = moved


_RELOCATIONS: Dict[Tuple[str, ...], List[Tuple[List[str], List[str]]]] = {}


def _relocations(paths: Tuple[str, ...]) -> List[Tuple[List[str], List[str]]]:
    """Each loaded package's ``__path__`` list with what it becomes in the sandbox (the
    in-sandbox paths are the same for every sandbox of a driver, so this is computed once)."""
    known = _RELOCATIONS.get(paths)
    if known is not None:
        return known
    agent, stdlib = paths[0], paths[1]
    host_stdlib = os.path.dirname(os.__file__)
    ours: Any = sys.modules[__package__].__path__
    found: List[Tuple[List[str], List[str]]] = [(ours, [agent])]
    for module in list(sys.modules.values()):
        where = getattr(module, "__path__", None)
        if isinstance(where, list) and module.__name__ != __package__:
            found.append((where, [stdlib + p[len(host_stdlib) :] if p.startswith(host_stdlib)
                                  else p for p in where]))  # fmt: skip
    _RELOCATIONS[paths] = found
    return found


def _preload() -> None:
    """Import every agent module and what they import lazily: shared by all children."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(here)):
        if name.endswith(".py") and name not in ("__init__.py", "zygote.py"):
            importlib.import_module(f"{__package__}.{name[:-3]}")
    for name in ("zipfile", "tarfile", "tempfile", "shutil", "fnmatch", "json", "ctypes",
                 "traceback", "gzip", "bz2", "lzma", "zlib", "signal", "collections",
                 "encodings.cp437", "encodings.idna", "encodings.latin_1", "encodings.ascii",
                 "encodings.utf_16", "encodings.utf_32"):  # fmt: skip
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _receive(sock: Any) -> Tuple[bytes, List[int]]:
    import array
    import socket

    fds = array.array("i")
    msg, anc, _flags, _addr = sock.recvmsg(_MAX_REQUEST, socket.CMSG_LEN(4 * fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    for fd in fds:
        os.set_inheritable(fd, False)
    return msg, list(fds)


def _ignore(signum: int, frame: Any) -> None:
    pass


def serve(sock_fd: int, seccomp_path: str, keep: int) -> int:
    import json
    import select
    import signal
    import socket

    global _LAST_CAP
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        _LAST_CAP = int(fh.read())
    with open(seccomp_path, "rb") as fh:
        native = _Native(fh.read(), keep)
    _preload()
    sock = socket.socket(fileno=sock_fd)
    gc.collect()
    gc.freeze()  # objects alive now are never scanned again: fewer pages copied per child
    # A dead agent is our child: reap it at once (its sandbox's cgroup cannot be removed while
    # it is a zombie), woken by SIGCHLD through a self-pipe.
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
    signal.signal(signal.SIGCHLD, _ignore)
    signal.set_wakeup_fd(wake_w)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if wake_r in ready:
            try:
                while len(os.read(wake_r, 512)) == 512:
                    pass
            except BlockingIOError:
                pass
            _reap()
        if sock.fileno() not in ready:
            continue
        msg, fds = _receive(sock)
        if not msg:
            return 0
        try:
            if len(fds) != 3:
                raise SetupError(f"expected 3 descriptors, got {len(fds)}")
            request = json.loads(msg)
            pidns = os.open(f"/proc/{int(request['init'])}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
            try:
                native.check(native.libc.setns(pidns, _CLONE_NEWPID), "joining the pid namespace")
            finally:
                os.close(pidns)
            _relocations(tuple(request["paths"]))  # once, here, not in every child
            pid = os.fork()
            if pid == 0:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                sock.close()
                _child(request, fds, native)
            answer: Dict[str, Any] = {"pid": pid}
        except (OSError, ValueError, KeyError, TypeError, SetupError) as exc:
            answer = {"error": str(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps(answer).encode())


def main(environ: Mapping[str, str]) -> int:
    """Configured by the driver through the environment (``drivers/namespace/zygote.py``)."""
    sock_fd = int(environ["VOIDRUN_ZYGOTE_SOCKET"])
    seccomp_path = environ["VOIDRUN_ZYGOTE_SECCOMP"]
    keep = int(environ["VOIDRUN_ZYGOTE_CAPS"], 0)
    os.umask(0o022)
    os.chdir("/")
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return serve(sock_fd, seccomp_path, keep)
