"""Finding ``runsc``, running it with a deadline, and picking the platform.

Every call runs in a worker thread (``subprocess.run`` with a timeout) because the sandbox's
processes must be born inside its cgroups (``Cgroups.born_inside`` moves the *calling thread*),
so a runsc that starts a sandbox cannot be spawned from the event loop anyway. A call that runs
past its deadline is killed with its process group, and the caller cleans the sandbox up from
its cgroups.

Platforms: ``systrap`` (runsc releases from mid-2023 on) and ``kvm`` are faster than ``ptrace``
but either may be missing or broken: Debian bookworm's runsc 0.0~20221219 has no systrap, and
its kvm platform hangs on a PVM host (``/dev/kvm`` without VMX/SVM; research notes, section 6).
:func:`pick_platform` probes the candidates once, each under a deadline and inside a throw-away
cgroup that is killed afterwards, and remembers the answer per runsc build and kernel in the
state directory, so a hanging platform costs its probe timeout once, not at every start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from voidrun_server.drivers.base import DriverError, DriverTimeoutError, DriverUnavailableError
from voidrun_server.drivers.namespace.cgroups import CgroupLimits, Cgroups

__all__ = ["INSTALL_HINT", "Runsc", "find_runsc", "pick_platform"]

INSTALL_HINT = "apt-get install runsc (Debian bookworm and later) and run the server as root"
PREFERRED = ("systrap", "kvm")  # fastest first; ptrace always works where runsc does
FALLBACK = "ptrace"
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def find_runsc(path: str | None = None) -> Path:
    found = path or shutil.which("runsc", path=_ENV["PATH"])
    if not found or not os.access(found, os.X_OK):
        raise DriverUnavailableError(f"runsc not found ({path or 'PATH'})", hint=INSTALL_HINT)
    return Path(found).resolve()


class Runsc:
    """One runsc binary with the global flags every call of this driver shares."""

    def __init__(self, binary: Path, platform: str) -> None:
        self.binary = binary
        self.platform = platform

    def argv(self, root: Path, *args: str, network: bool = False) -> list[str]:
        """``network``: gVisor's netstack on the interfaces of the network namespace the spec
        names (``--network=sandbox``); else loopback only (``--network=none``)."""
        return [
            str(self.binary),
            f"--root={root}",
            f"--platform={self.platform}",
            f"--network={'sandbox' if network else 'none'}",
            "--host-uds=create",  # the agent's socket becomes a host socket in its run dir
            "--ignore-cgroups",  # the driver places and limits the sandbox itself
            *args,
        ]

    def sandbox_argv(self, root: Path, *args: str) -> list[str]:
        """``runsc ... run`` for a wired sandbox (``--network=sandbox``), spawned in the
        sandbox's network namespace. runsc 20221219 refuses to copy a namespace it takes for
        the host's, and it tells them apart by whether ``/proc/sys/net/core/rmem_default``
        exists, which since Linux 6.x it does in every namespace. So it runs in a mount
        namespace of its own (slave: the host's unmounts still reach it) where an empty
        tmpfs hides ``/proc/sys/net/core``; nothing else of runsc reads it (the sentry mounts
        its own /proc in its chroot)."""
        hide = (
            "mount -t tmpfs -o size=4k,mode=0555,nosuid,nodev,noexec voidrun /proc/sys/net/core"
            ' && exec "$@"'
        )
        unshare = ["unshare", "--mount", "--propagation", "slave", "--"]
        return [*unshare, "/bin/sh", "-c", hide, "sh", *self.argv(root, *args, network=True)]

    def call(
        self,
        root: Path,
        *args: str,
        deadline: float,
        log: Path | None = None,
        network: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one runsc command; DriverError on failure, DriverTimeoutError past ``deadline``.
        ``network``: a command of a wired sandbox (``run`` goes through :meth:`sandbox_argv`)."""
        if network and args[:1] == ("run",):
            return run(self.sandbox_argv(root, *args), deadline=deadline, log=log)
        return run(self.argv(root, *args, network=network), deadline=deadline, log=log)

    def version(self) -> str:
        out = run([str(self.binary), "--version"], deadline=time.monotonic() + 10)
        return out.stdout.decode(errors="replace").splitlines()[0].strip()

    def platforms(self) -> list[str]:
        """The platforms this build knows (``runsc help platforms``)."""
        out = run([str(self.binary), "help", "platforms"], deadline=time.monotonic() + 10)
        text = (out.stdout + out.stderr).decode(errors="replace")
        return [p for p in (*PREFERRED, FALLBACK) if p in text.split()]


def run(
    argv: Sequence[str], *, deadline: float, log: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    timeout = max(0.0, deadline - time.monotonic())
    out = open(log, "ab") if log is not None else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out if out is not None else subprocess.PIPE,
            stderr=out if out is not None else subprocess.PIPE,
            env=_ENV,
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise DriverTimeoutError(f"runsc {argv[-1]!r} timed out", " ".join(argv)) from exc
    except FileNotFoundError as exc:
        raise DriverUnavailableError(f"cannot run {argv[0]}", hint=INSTALL_HINT) from exc
    finally:
        if out is not None:
            out.close()
    result = subprocess.CompletedProcess(list(argv), proc.returncode, stdout, stderr)
    if proc.returncode != 0:
        message = (stderr or b"").decode(errors="replace").strip()[-2000:]
        raise DriverError(f"runsc failed (exit {proc.returncode})", message or " ".join(argv))
    return result


def pick_platform(
    runsc: Path, cgroups: Cgroups, cache_dir: Path, *, probe_timeout: float
) -> tuple[str, str]:
    """(platform, why): the first of :data:`PREFERRED` this runsc has that runs ``/bin/true``
    within ``probe_timeout`` here, else ``ptrace``. Cached in ``cache_dir`` per runsc build and
    kernel release."""
    probe = Runsc(runsc, FALLBACK)
    key = f"{probe.version()} {os.uname().release}"
    cache = cache_dir / ".platform.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return str(saved["platform"]), str(saved["why"])
    known = probe.platforms()
    platform, notes = FALLBACK, []
    for candidate in (p for p in PREFERRED if p in known):
        if candidate == "kvm" and not os.path.exists("/dev/kvm"):
            notes.append("kvm: no /dev/kvm")
            continue
        problem = _probe(Runsc(runsc, candidate), cgroups, probe_timeout)
        if problem is None:
            platform = candidate
            break
        notes.append(f"{candidate}: {problem}")
    missing = [p for p in PREFERRED if p not in known]
    if missing:
        notes.append(f"not in this runsc: {', '.join(missing)}")
    why = "; ".join(notes) or "probed"
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, "platform": platform, "why": why}))
    os.replace(tmp, cache)
    return platform, why


def _probe(runsc: Runsc, cgroups: Cgroups, timeout: float) -> str | None:
    """None when ``runsc do /bin/true`` works on this platform; else what went wrong. Runs in a
    cgroup of its own that is emptied and removed whatever happens (a hung sandbox included)."""
    name = f"probe-{os.getpid()}-{time.monotonic_ns()}"
    paths = cgroups.create(name, CgroupLimits(cpu=1, mem_mb=512, pids_max=256))
    root = Path(tempfile.mkdtemp(prefix="voidrun-runsc-probe-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        with cgroups.born_inside(paths) as inside:
            proc = subprocess.Popen(
                runsc.argv(root, "do", "/bin/true"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=_ENV,
                start_new_session=True,
            )
        if not inside:
            cgroups.attach(paths, proc.pid)
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"no answer within {timeout:.0f}s"
        if proc.returncode != 0:
            return f"exit {proc.returncode}: {stderr.decode(errors='replace').strip()[-200:]}"
        return None
    finally:
        cgroups.remove(paths, time.monotonic() + 10)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            if proc.stderr is not None:
                proc.stderr.close()
        shutil.rmtree(root, ignore_errors=True)
