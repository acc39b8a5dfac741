"""Running the build's commands on the host and inside the image's chroot.

Host tool checks, the environment chroot commands get, a streaming subprocess runner with
timeouts that kills the whole process group, and the /proc and /dev mounts a chroot needs,
which are always undone (and never descended into when a tree is deleted). Everything here
needs host root and runs synchronously.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from voidrun_server.images.progress import ImageBuildError, _Reporter

CHECK_TIMEOUT = 2 * 60

_BUILD_CA = "tmp/voidrun-build-ca.crt"
_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Passed from the host into chroot commands so a proxied or mirrored host can still build.
_PASSTHROUGH_ENV = (
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "NPM_CONFIG_REGISTRY",
)


# --- running commands --------------------------------------------------------------------------


def _chroot_env(rootfs: Path) -> dict[str, str]:
    env = {
        "PATH": _CHROOT_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "dumb",
        "DEBIAN_FRONTEND": "noninteractive",
        "NPM_CONFIG_UPDATE_NOTIFIER": "false",
    }
    env.update({k: v for k, v in os.environ.items() if k in _PASSTHROUGH_ENV})
    if (rootfs / _BUILD_CA).is_file():
        env["NODE_EXTRA_CA_CERTS"] = f"/{_BUILD_CA}"
    return env


def _chroot_stream(
    rootfs: Path,
    argv: Sequence[str],
    step: str,
    timeout: float,
    report: _Reporter,
    hint: str = "see the log lines above",
) -> None:
    _stream(
        [_tool("chroot"), str(rootfs), *argv],
        step=step,
        timeout=timeout,
        report=report,
        env=_chroot_env(rootfs),
        hint=hint,
    )


def _chroot_output(rootfs: Path, argv: Sequence[str]) -> str:
    try:
        result = subprocess.run(
            [_tool("chroot"), str(rootfs), *argv],
            env=_chroot_env(rootfs),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=CHECK_TIMEOUT,
            cwd="/",
        )
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(f"image check {' '.join(argv)!r} timed out") from exc
    if result.returncode != 0:
        raise ImageBuildError(
            f"image check {' '.join(argv)!r} failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    return result.stdout


def _stream(
    argv: Sequence[str],
    *,
    step: str,
    timeout: float,
    report: _Reporter,
    env: dict[str, str],
    hint: str,
) -> None:
    """Run ``argv``, reporting each output line; raise ImageBuildError on failure or timeout.

    The child gets its own process group so a timeout (or our own interruption) can kill
    everything it started, e.g. dpkg under apt under chroot.
    """
    tail: collections.deque[str] = collections.deque(maxlen=25)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            cwd="/",
            start_new_session=True,
        )
    except FileNotFoundError as exc:
        tool = os.path.basename(argv[0])
        raise ImageBuildError(f"{tool} not found: {_HOST_TOOLS.get(tool, 'install it')}") from exc
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        _kill_group(proc)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if line:
                tail.append(line)
                report.line(line)
        returncode = proc.wait()
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    finally:
        timer.cancel()
        if proc.stdout is not None:
            proc.stdout.close()
    if timed_out.is_set():
        raise ImageBuildError(f"{step}: {' '.join(argv[:3])} timed out after {timeout:.0f}s")
    if returncode != 0:
        log = "\n".join(tail)
        raise ImageBuildError(
            f"{step} failed: {' '.join(argv[:3])} exited with {returncode}; {hint}.\n{log}"
        )


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --- host checks -------------------------------------------------------------------------------

_HOST_TOOLS = {
    "debootstrap": "apt-get install debootstrap",
    "chroot": "apt-get install coreutils",
    "mount": "apt-get install mount",
    "umount": "apt-get install mount",
}


def _check_host() -> None:
    if os.geteuid() != 0:
        raise ImageBuildError(
            "building an image needs root (debootstrap, chroot, mount, chown): run it as root"
        )
    for tool in _HOST_TOOLS:
        _tool(tool)
    if not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        raise ImageBuildError(
            "Debian archive keyring not found: apt-get install debian-archive-keyring"
        )


def _tool(name: str) -> str:
    """Absolute path of a host tool; sbin may be missing from a service's PATH."""
    search = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
    )
    found = shutil.which(name, path=search)
    if found is None:
        raise ImageBuildError(f"{name} not found: {_HOST_TOOLS.get(name, 'install it')}")
    return found


# --- mounts ------------------------------------------------------------------------------------


@contextmanager
def _chroot_mounts(rootfs: Path) -> Iterator[None]:
    """Mount /proc and the host's /dev into the chroot; ALWAYS unmount, even on errors.

    A mount left behind would be inherited by the image directory and, worse, a later
    ``rmtree`` of it would delete the host's device nodes; `_remove_tree` guards against that
    too, but unmounting here is the first line.
    """
    mounts: list[Path] = []
    try:
        for argv, point in (
            ([_tool("mount"), "-t", "proc", "proc"], rootfs / "proc"),
            ([_tool("mount"), "--bind", "/dev"], rootfs / "dev"),
        ):
            point.mkdir(parents=True, exist_ok=True)
            _run_quiet([*argv, str(point)])
            mounts.append(point)
        yield
    finally:
        for point in reversed(mounts):
            _unmount(point)
        leftover = _mounts_under(rootfs)
        if leftover:
            raise ImageBuildError(
                f"could not unmount {', '.join(map(str, leftover))}; unmount them by hand"
            )


def _run_quiet(argv: Sequence[str]) -> None:
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise ImageBuildError(f"{argv[0]} not found") from exc
    if result.returncode != 0:
        raise ImageBuildError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _unmount(point: Path) -> None:
    """Detach ``point`` (lazily, so a straggling process cannot keep it busy)."""
    subprocess.run(
        [_tool("umount"), "--lazy", str(point)],
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path``, deepest first (from /proc/self/mountinfo)."""
    base = os.path.realpath(path)
    found: list[Path] = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) < 5:
            continue
        point = _unescape_mountinfo(fields[4])
        if point == base or point.startswith(base.rstrip("/") + "/"):
            found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _unescape_mountinfo(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\NNN``."""
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _remove_tree(path: Path) -> None:
    """Delete a (partial) image directory without ever descending into a mount.

    A build killed mid-way can leave the host's /dev or /proc bound inside it; rmtree would
    happily recurse into those, so they are detached first and deletion is refused if any
    survive.
    """
    if not os.path.lexists(path):
        return
    for point in _mounts_under(path):
        _unmount(point)
    leftover = _mounts_under(path)
    if leftover:
        raise ImageBuildError(
            f"refusing to delete {path}: still mounted at {', '.join(map(str, leftover))}; "
            "unmount them by hand"
        )
    shutil.rmtree(path)
