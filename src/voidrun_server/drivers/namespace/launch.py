"""Spawning bubblewrap and the handshake that puts the sandbox in place before it runs.

Sequence (all before a single instruction of the agent runs)::

    server (worker thread)                   bwrap (as the sandbox's base uid S)
    step into the sandbox's cgroups (v1)
    spawn (vfork; setpriv drops to S) ─────────► born in those cgroups
    step back out                                clone(NEWUSER|NEWPID|NEWNS|…) child
    read --info-fd  ◄─────────────────────────── {"child-pid": N}
    write /proc/N/{uid,gid}_map                   child blocks on --userns-block-fd
    (v2 only: attach bwrap and N to the cgroup)
    write one byte  ─────────────────────────────► child: mounts, caps, seccomp, exec PID 1
    read the holder's echo ◄──────────────────── PID 1 (the life-line holder) runs
    fork server: fork the agent into it ────────► the agent joins (zygote.py)

(Without the fork server, PID 1 is the agent itself and the last two steps do not happen.)

The sandbox is in its cgroups before it is unblocked, so everything it (and anything it forks)
does is limited and accounted from the start: no process of the sandbox ever runs outside its
limits. (Why the thread steps in and out instead of attaching pids: ``cgroups/v1.py``.)

Core dumps are off for the whole sandbox: the driver sets RLIMIT_CORE to 0 (soft and hard) on
the server process itself when it starts (``disable_core_dumps``), so bwrap, the agent (and
the fork server) and every descendant inherit 0, and without CAP_SYS_RESOURCE in the initial
namespace nothing inside can raise the hard limit again. A core file would otherwise be written
by the kernel into the sandbox's cwd with whatever secrets the process held; the server's own
would hold API keys. (It used to be an exec of util-linux ``prlimit`` per sandbox.)

With ``netns``, the spawning thread steps into the sandbox's network namespace for the spawn
(``netns.entered``): bwrap and everything it starts are born there.

bwrap runs detached from the server (new session, stdio to a log file, no
``--die-with-parent``) so a server restart leaves it running.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from voidrun_server.drivers.base import DriverError, DriverTimeoutError
from voidrun_server.drivers.namespace.bwrap import BwrapFds
from voidrun_server.drivers.namespace.cgroups import Cgroups
from voidrun_server.drivers.namespace.netns import entered
from voidrun_server.drivers.namespace.procs import ProcessRef
from voidrun_server.drivers.namespace.seccomp import open_bpf_fd
from voidrun_server.drivers.namespace.userns import IdMap

__all__ = ["Launched", "disable_core_dumps", "launch"]


class _DetachedPopen(subprocess.Popen[bytes]):
    """bwrap is meant to outlive this object (and the server): no "still running" warning.

    The driver reaps it by pid (``os.waitpid``), which also works after a restart of the
    driver object, so the Popen object is dropped right after the handshake.
    """

    def __del__(self) -> None:
        pass


@dataclass(frozen=True)
class Launched:
    monitor: ProcessRef  # bwrap's monitor, in the host pid namespace
    init: ProcessRef  # the sandbox's pid 1 (the agent), seen from the host


def _read_info(fd: int, deadline: float) -> dict[str, Any]:
    """bwrap's --info-fd JSON document; EOF before it means bwrap failed to start."""
    poller = select.poll()  # not select(): server fds may be numbered above FD_SETSIZE
    poller.register(fd, select.POLLIN)
    buf = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DriverTimeoutError("bubblewrap did not report its child in time")
        if not poller.poll(remaining * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise DriverError("bubblewrap exited before starting the sandbox")
        buf += chunk
        if buf.rstrip().endswith(b"}"):
            try:
                info: dict[str, Any] = json.loads(buf)
                return info
            except ValueError:
                continue


def disable_core_dumps() -> None:
    """RLIMIT_CORE 0/0 for this process and everything it starts from now on."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class AgentJoin(Protocol):
    """Forks the agent into the namespaces of the sandbox whose PID 1 is ``init`` (the
    zygote, ``zygote.py``); ``life`` and ``log`` are handed to the agent, and ``ready``, which
    the child reads one byte from before it joins the namespaces (the holder's echo)."""

    def __call__(
        self, init: ProcessRef, life: int, log: int, ready: int, deadline: float
    ) -> int: ...


def launch(
    build_argv: Callable[[BwrapFds], list[str]],
    *,
    bpf: bytes,
    idmap: IdMap,
    drop_prefix: list[str] | None,
    cgroups: Cgroups,
    cgroup_paths: dict[str, str],
    log_file: Path,
    deadline: float,
    netns: Path | None = None,
    join: AgentJoin | None = None,
    mounts: contextlib.AbstractContextManager[None] | None = None,
) -> Launched:
    """Start bwrap, place the sandbox, release it. Blocking: call from a worker thread.

    With ``join``, bwrap's payload is the life-line holder (``cat`` on a pipe): it echoes one
    byte once it runs, which means bwrap has finished the sandbox's mounts. ``join`` forks the
    agent as soon as the sandbox's PID namespace exists, i.e. while bwrap still builds the
    mounts: the child moves into the cgroups meanwhile and reads the echo itself before it
    joins the other namespaces (fork and cgroup moves leave the critical path). On failure
    every process started here is killed and reaped before the error propagates.
    """
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe()
    seccomp_r = open_bpf_fd(bpf)
    fds = BwrapFds(info=info_w, userns_block=block_r, seccomp=seccomp_r)
    argv = build_argv(fds)
    kwargs: dict[str, Any] = {}
    if drop_prefix is not None:
        argv = [*drop_prefix, *argv]
    else:  # fork() path: its cost grows with the server's RSS (see userns.py)
        kwargs.update(user=idmap.base, group=idmap.base, extra_groups=[])
    log_fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    life = echo = None
    if join is not None:
        life, echo = os.pipe(), os.pipe()
        os.write(life[1], b".")  # waits in the pipe until the holder runs and echoes it
    ours = (info_r, block_w, log_fd) + ((life[1], echo[0]) if life and echo else ())
    try:
        in_netns = entered(netns) if netns is not None else contextlib.nullcontext()
        in_mounts = mounts if mounts is not None else contextlib.nullcontext()
        with in_netns, in_mounts, cgroups.born_inside(cgroup_paths) as inside:
            popen = _DetachedPopen(
                argv,
                stdin=life[0] if life else subprocess.DEVNULL,
                stdout=echo[1] if echo else log_fd,
                stderr=log_fd,
                pass_fds=fds.all(),
                start_new_session=True,
                env={},
                cwd="/",
                **kwargs,
            )
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    finally:
        for fd in (*fds.all(), *((life[0], echo[1]) if life and echo else ())):
            os.close(fd)

    child: ProcessRef | None = None
    try:
        info = _read_info(info_r, deadline)
        child_pid = int(info["child-pid"])
        child = ProcessRef.of(child_pid)
        if child is None:
            raise DriverError("the sandbox process died during setup")
        idmap.write(child_pid)
        if not inside:
            cgroups.attach(cgroup_paths, popen.pid)
            cgroups.attach(cgroup_paths, child_pid)
        monitor = ProcessRef.of(popen.pid)
        if monitor is None:
            raise DriverError("bubblewrap died during setup")
        os.write(block_w, b"1")
        if join is not None and life is not None and echo is not None:
            join(child, life[1], log_fd, echo[0], deadline)
        return Launched(monitor=monitor, init=child)
    except BaseException:
        if child is not None:
            child.kill()
        popen.kill()
        try:
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        raise
    finally:
        for fd in ours:
            os.close(fd)
