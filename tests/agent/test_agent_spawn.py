"""``agent.spawn`` starts children exactly as ``subprocess.Popen(start_new_session=True,
close_fds=True)`` does, and fails the same way; here both run side by side in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from voidrun_server.agent.spawn import KNOWN, spawn

ENV = {"PATH": "/usr/bin:/bin", "ONLY": "this"}


def run_both(argv: list[str], cwd: str, tmp_path: Path) -> tuple[bytes, bytes]:
    """Output of ``argv`` started by ``spawn`` and by ``Popen`` with the same arguments."""
    outputs = []
    for kind in ("spawn", "popen"):
        out = tmp_path / f"{kind}.out"
        with open(out, "wb") as fh, open(os.devnull, "rb") as null:
            if kind == "spawn":
                pid = spawn(argv, argv[0], ENV, cwd, null.fileno(), fh.fileno(), fh.fileno())
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
            else:
                subprocess.run(
                    argv, env=ENV, cwd=cwd, stdin=null, stdout=fh, stderr=fh, check=True,
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
        outputs.append(out.read_bytes())
    return outputs[0], outputs[1]


def test_the_running_python_is_one_spawn_knows() -> None:
    assert KNOWN, f"spawn falls back to subprocess on Python {sys.version_info[:2]}"


def test_child_sees_the_same_process_state(tmp_path: Path) -> None:
    # Session, process group, cwd, environment, open fds, signal dispositions and mask.
    script = (
        "import os, signal, sys\n"
        "print(os.getsid(0) == os.getpid(), os.getpgrp() == os.getpid(), os.getcwd())\n"
        "print(sorted(os.environ.items()))\n"
        "print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n"
        "print([signal.getsignal(s) for s in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT)])\n"
        "print(signal.pthread_sigmask(signal.SIG_BLOCK, []))\n"
        "print(open('/proc/self/status').read().split('SigIgn:')[1].split()[0])\n"
    )
    keep_open = os.open(os.devnull, os.O_RDONLY)  # inheritable: close_fds must still close it
    os.set_inheritable(keep_open, True)
    try:
        mine, popen = run_both([sys.executable, "-I", "-S", "-c", script], str(tmp_path), tmp_path)
    finally:
        os.close(keep_open)
    assert mine == popen
    assert mine.startswith(f"True True {tmp_path}\n".encode())


@pytest.mark.parametrize(
    "case", ["missing program", "missing cwd", "cwd is a file", "not executable", "no #! line"]
)
def test_failures_raise_what_popen_raises(tmp_path: Path, case: str) -> None:
    program, cwd = "/bin/true", str(tmp_path)
    if case == "missing program":
        program = str(tmp_path / "nope")
    elif case == "missing cwd":
        cwd = str(tmp_path / "gone")
    elif case == "cwd is a file":
        (tmp_path / "f").write_text("")
        cwd = str(tmp_path / "f")
    elif case == "not executable":
        program = str(tmp_path / "plain")
        Path(program).write_text("#!/bin/sh\n")
    else:
        program = str(tmp_path / "script")
        Path(program).write_text("echo hi\n")
        os.chmod(program, 0o755)
    with pytest.raises(OSError) as mine:
        spawn([program], program, ENV, cwd, 0, 1, 2)
    with pytest.raises(OSError) as popen:
        subprocess.Popen([program], env=ENV, cwd=cwd, start_new_session=True, close_fds=True)
    assert type(mine.value) is type(popen.value)
    assert (mine.value.errno, mine.value.strerror, mine.value.filename) == (
        popen.value.errno,
        popen.value.strerror,
        popen.value.filename,
    )
    assert str(mine.value) == str(popen.value)


def test_a_failing_preexec_hook_is_reported(tmp_path: Path) -> None:
    def hook() -> None:
        raise RuntimeError("no")

    with pytest.raises(Exception, match="preexec_fn") as info:
        spawn(["/bin/true"], "/bin/true", ENV, str(tmp_path), 0, 1, 2, preexec=hook)
    assert not isinstance(info.value, OSError)
