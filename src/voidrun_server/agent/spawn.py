"""Starting a program the way ``subprocess.Popen`` does, without importing ``subprocess``.

``subprocess`` costs a visible part of the first exec in a fresh sandbox (it imports
``selectors``, ``threading``, ``signal``/``enum`` and more). What ``Popen`` does on Linux is
prepare arguments and call ``_posixsubprocess.fork_exec`` (vfork + exec, or fork when there is a
``preexec_fn``); :func:`spawn` makes the same call with the same arguments ``Popen`` passes for
``start_new_session=True, close_fds=True, restore_signals=True``, and turns the child's error
report into the same exceptions. So the child's environment, working directory, session,
signal dispositions, rlimits and inherited fds are exactly what ``Popen`` would give it.

``fork_exec``'s signature differs between Python versions; on one this module does not know, it
falls back to ``subprocess.Popen`` itself.
"""

from __future__ import annotations

import builtins
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Mapping, Sequence

# The argument lists Popen passes, by version (3.11 added process_group and allow_vfork;
# 3.14 dropped allow_vfork). Tested on 3.9 to 3.13. (_posixsubprocess is imported on the
# first spawn: it is a shared library to load.)
KNOWN = (3, 9) <= sys.version_info[:2] <= (3, 14)


class SpawnError(Exception):
    """The child reported something that is not an ``OSError`` (never expected)."""


def spawn(
    argv: Sequence[str],
    executable: str,
    env: Mapping[str, str],
    cwd: str,
    stdin: int,
    stdout: int,
    stderr: int,
    preexec: Callable[[], None] | None = None,
    creds: tuple[int, list[int], int] | None = None,
) -> int:
    """Start ``argv`` (running the file ``executable``, an absolute or cwd-relative path) in a
    new session with fds 0, 1, 2 set to ``stdin``/``stdout``/``stderr`` and every other fd
    closed; return its pid. ``preexec`` runs in the child after ``setsid`` (forces fork).
    ``creds``: ``(gid, supplementary gids, uid)`` the child takes before ``exec`` (as
    ``Popen``'s ``group``, ``extra_groups`` and ``user`` do).

    Raises ``OSError`` as ``Popen`` would: ``filename`` is ``cwd`` when changing into it failed,
    else ``executable`` (the failed child is reaped here). The caller owns the pid of a started
    child (in the agent its exit status goes to the reaper).
    """
    global KNOWN
    if not KNOWN:
        return _popen(argv, executable, env, cwd, stdin, stdout, stderr, preexec, creds)
    env_list = []
    for key, value in env.items():
        name = os.fsencode(key)
        if b"=" in name:
            raise ValueError("illegal environment variable name")
        env_list.append(name + b"=" + os.fsencode(value))
    program = os.fsencode(executable)
    if os.path.dirname(program):
        executables = [program]
    else:  # searched like Popen (and os.execvpe) do
        executables = [os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env)]
    errpipe_read, errpipe_write = _pipe_above_stdio()
    try:
        try:
            pid = _fork_exec(
                list(argv), executables, env_list, cwd, stdin, stdout, stderr,
                errpipe_read, errpipe_write, preexec, creds,
            )  # fmt: skip
        except TypeError:  # not the signature this version was expected to have
            KNOWN = False
            return _popen(argv, executable, env, cwd, stdin, stdout, stderr, preexec, creds)
        finally:
            os.close(errpipe_write)
        report = bytearray()
        while True:  # EOF when exec succeeded (the pipe is close-on-exec)
            part = os.read(errpipe_read, 50000)
            report += part
            if not part or len(report) > 50000:
                break
    finally:
        os.close(errpipe_read)
    if report:
        try:
            os.waitpid(pid, 0)  # as Popen does: the child exits right after its report
        except ChildProcessError:
            pass
        _raise(bytes(report), executable, cwd)
    return pid


def _pipe_above_stdio() -> tuple[int, int]:
    """A pipe whose write end is not fd 0, 1 or 2 (the child's dup2s would clobber it)."""
    read_end, write_end = os.pipe()
    low = []
    while write_end < 3:
        low.append(write_end)
        write_end = os.dup(write_end)
    for fd in low:
        os.close(fd)
    return read_end, write_end


def _fork_exec(
    args: list[str],
    executables: list[bytes],
    env_list: list[bytes],
    cwd: str,
    stdin: int,
    stdout: int,
    stderr: int,
    errpipe_read: int,
    errpipe_write: int,
    preexec: Callable[[], None] | None,
    creds: tuple[int, list[int], int] | None,
) -> int:
    common = (args, executables, True, (errpipe_write,), cwd, env_list)
    pipes = (stdin, -1, -1, stdout, -1, stderr, errpipe_read, errpipe_write)
    from _posixsubprocess import fork_exec

    hook: Any = preexec  # typeshed wants a callable; like Popen we pass None for "no hook"
    gid: Any = None  # as Popen passes them for "no change"
    groups: Any = None
    uid: Any = None
    if creds is not None:
        gid, groups, uid = creds
    # then: restore_signals, start_new_session, [process_group,] gid, groups, uid, umask, hook
    if sys.version_info >= (3, 14):
        return fork_exec(*common, *pipes, True, True, -1, gid, groups, uid, -1, hook)
    elif sys.version_info >= (3, 11):  # [..., allow_vfork]
        return fork_exec(*common, *pipes, True, True, -1, gid, groups, uid, -1, hook, True)
    else:
        return fork_exec(*common, *pipes, True, True, gid, groups, uid, -1, hook)


def _raise(report: bytes, executable: str, cwd: str) -> None:
    """Popen's translation of the child's ``"ExceptionName:hex errno:message"``."""
    try:
        name, hex_errno, raw = report.split(b":", 2)
        message = raw.decode()
    except ValueError:
        raise SpawnError(f"bad exception data from child: {report!r}") from None
    kind = getattr(builtins, name.decode("ascii", "replace"), None)
    if isinstance(kind, type) and issubclass(kind, OSError) and hex_errno:
        number = int(hex_errno, 16)
        never_executed = message == "noexec"  # chdir(cwd) failed
        if number:
            message = os.strerror(number)
        elif never_executed:
            message = ""
        raise kind(number, message, cwd if never_executed else executable)
    raise SpawnError(message)


def _popen(
    argv: Sequence[str],
    executable: str,
    env: Mapping[str, str],
    cwd: str,
    stdin: int,
    stdout: int,
    stderr: int,
    preexec: Callable[[], None] | None,
    creds: tuple[int, list[int], int] | None = None,
) -> int:  # pragma: no cover - only on Python versions this module does not know
    import subprocess

    gid, groups, uid = creds if creds is not None else (None, None, None)

    proc = subprocess.Popen(
        list(argv),
        executable=executable,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        cwd=cwd,
        env=dict(env),
        start_new_session=True,
        close_fds=True,
        preexec_fn=preexec,
        group=gid,
        extra_groups=groups,
        user=uid,
    )
    proc.returncode = 0  # the reaper owns the status; Popen must never waitpid this pid
    return proc.pid
