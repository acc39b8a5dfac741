"""Build the default ``code`` sandbox image: a Debian bookworm root filesystem.

An image is a plain directory tree that sandboxes use as the read-only lower layer of their
overlay root. Layout on disk::

    <images_root>/<name>/<tag>/rootfs/         the tree
    <images_root>/<name>/<tag>/manifest.json   written last: its presence means "complete"
    <images_root>/<name>/.<tag>.partial-XXXX   a build in progress (or a crashed one)
    <images_root>/<name>/.<tag>.lock           serialises builds of one tag

The build needs host root (debootstrap, chroot, mount, chown) and runs synchronously: call it
from the CLI or a worker thread, never from an event loop.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from voidrun_server.images.shift import OwnershipShiftError, shift_ownership

__all__ = [
    "CODE_IMAGE_NAME",
    "CODE_PACKAGES",
    "BuildProgress",
    "BuiltImage",
    "ImageBuildError",
    "build_code_image",
    "find_built_image",
    "image_dir",
]

CODE_IMAGE_NAME = "code"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MANIFEST = "manifest.json"
ID_COUNT = 65536

# Everything the SDK's code interpreter and a typical agent session expect to find.
CODE_PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-pip",
    "python3-venv",
    "nodejs",
    "npm",
    "git",
    "curl",
    "ca-certificates",
    "bash",
    "coreutils",
    "tar",
    "gzip",
    "bzip2",
    "zip",
    "unzip",
    "procps",
    "less",
)
# debootstrap's own dependency resolver cannot handle virtual packages, which npm's ~300 node-*
# dependencies use; these are left to apt inside the chroot. Everything else comes in the one
# debootstrap run.
_APT_AFTER_DEBOOTSTRAP: tuple[str, ...] = ("npm",)
NPM_GLOBAL_PACKAGES: tuple[str, ...] = ("tsx",)

# Mount points the sandbox driver binds its agent and runtime state onto.
SANDBOX_MOUNT_POINTS: tuple[str, ...] = ("opt/voidrun", "run/voidrun")
HOSTNAME_PLACEHOLDER = "sandbox"
ROOT_PROMPT = r"\u@\h:\w\$ "  # "\$" is "#" for uid 0, which is what root sees in the sandbox

DEBOOTSTRAP_TIMEOUT = 30 * 60
APT_TIMEOUT = 30 * 60
NPM_TIMEOUT = 15 * 60
CHECK_TIMEOUT = 2 * 60

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
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
_STEPS = (
    "prepare",
    "debootstrap",
    "apt install",
    "npm install tsx",
    "configure",
    "verify",
    "shift ownership",
    "finalize",
)


class ImageBuildError(Exception):
    """An image could not be built; the message says what failed and what to do about it."""


@dataclass(frozen=True)
class BuildProgress:
    """One progress report; the CLI turns a stream of these into a progress bar."""

    step: str
    done: int
    total: int
    detail: str = ""


@dataclass(frozen=True)
class BuiltImage:
    """A complete image on disk, as described by its manifest."""

    name: str
    tag: str
    rootfs: Path
    size_bytes: int
    built_at: datetime


ProgressCallback = Callable[[BuildProgress], None]


def image_dir(images_root: Path, name: str, tag: str) -> Path:
    """Where image ``name:tag`` lives (complete or not)."""
    _check_component("image name", name)
    _check_component("image tag", tag)
    return images_root / name / tag


def find_built_image(images_root: Path, name: str, tag: str) -> BuiltImage | None:
    """Return the complete image ``name:tag``, or None.

    The manifest is written only after the tree is complete and in place, so a missing,
    unreadable or mismatching manifest means "not built" and nothing else is trusted.
    """
    manifest = _read_manifest(image_dir(images_root, name, tag))
    if manifest is None:
        return None
    return _built_image(images_root, manifest)


def build_code_image(
    images_root: Path,
    *,
    tag: str,
    mirror: str = DEFAULT_MIRROR,
    uid_base: int = 100000,
    progress: ProgressCallback | None = None,
    force: bool = False,
) -> BuiltImage:
    """Build (or return the cached) ``code`` image for ``tag``.

    A complete image built for the same ``uid_base`` is returned at once unless ``force``; one
    built for another ``uid_base`` would be unusable by this host's sandboxes, so it is rebuilt.
    The tree is built in a hidden partial directory and renamed into place, and the manifest
    is written last, so an interrupted build never looks complete. Needs host root.
    """
    name = CODE_IMAGE_NAME
    target = image_dir(images_root, name, tag)
    if uid_base <= 0:
        raise ImageBuildError(f"uid_base must be positive, got {uid_base}")
    report = _Reporter(progress)
    report.step("prepare")
    cached = None if force else _cached(images_root, target, uid_base)
    if cached is not None:
        report.done(f"using cached image {name}:{tag}")
        return cached
    _check_host()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Sandboxes' unprivileged helpers must reach rootfs/ even if our umask is strict.
    os.chmod(target.parent, 0o755)
    with _build_lock(target):
        cached = None if force else _cached(images_root, target, uid_base)
        if cached is not None:  # someone else built it while we waited for the lock
            report.done(f"using cached image {name}:{tag}")
            return cached
        _remove_stale(target)
        partial = Path(tempfile.mkdtemp(prefix=f".{tag}.partial-", dir=target.parent))
        try:
            os.chmod(partial, 0o755)  # mkdtemp makes it 0700
            rootfs = partial / "rootfs"
            _build_tree(rootfs, mirror=mirror, report=report)
            report.step("shift ownership", f"uid/gid N -> {uid_base}+N")
            try:
                shift_ownership(rootfs, uid_base, count=ID_COUNT)
            except OwnershipShiftError as exc:
                raise ImageBuildError(f"cannot shift image ownership: {exc}") from exc
            report.step("finalize")
            size = _disk_usage(rootfs)
            os.sync()  # the manifest must never describe data still only in the page cache
            _move_into_place(partial, target)
        except BaseException:
            # Best effort: if this fails too, the next build's _remove_stale retries it.
            with contextlib.suppress(Exception):
                _remove_tree(partial)
            raise
        manifest = {
            "name": name,
            "tag": tag,
            "size_bytes": size,
            "built_at": datetime.now(UTC).isoformat(),
            "packages": list(CODE_PACKAGES),
            "npm_global_packages": list(NPM_GLOBAL_PACKAGES),
            "suite": SUITE,
            "mirror": mirror,
            "uid_base": uid_base,
        }
        _write_json_atomic(target / MANIFEST, manifest)
    built = find_built_image(images_root, name, tag)
    if built is None:  # pragma: no cover - we just wrote it
        raise ImageBuildError(f"image {name}:{tag} was built but its manifest is unreadable")
    report.done(f"built {name}:{tag} ({size / 2**20:.0f} MiB)")
    return built


# --- the build proper --------------------------------------------------------------------------


def _build_tree(rootfs: Path, *, mirror: str, report: _Reporter) -> None:
    """debootstrap, then apt and npm inside a chroot, then configure and verify."""
    include = [p for p in CODE_PACKAGES if p not in _APT_AFTER_DEBOOTSTRAP]
    report.step("debootstrap", f"{SUITE} from {mirror}")
    _stream(
        [
            _tool("debootstrap"),
            "--variant=minbase",
            f"--include={','.join(include)}",
            "--components=main",
            SUITE,
            str(rootfs),
            mirror,
        ],
        step="debootstrap",
        timeout=DEBOOTSTRAP_TIMEOUT,
        report=report,
        env={**os.environ, "LC_ALL": "C"},
        hint="check that the mirror is reachable and the disk is not full",
    )
    _write_text(rootfs / "etc/apt/sources.list", _sources_list(mirror))
    _write_text(rootfs / "etc/dpkg/dpkg.cfg.d/voidrun-slim", _DPKG_SLIM)
    # While building, the chroot resolves names like the host does; replaced below.
    _write_text(rootfs / "etc/resolv.conf", _host_resolv_conf())
    # And trusts what the host trusts, so a host behind a TLS-inspecting proxy can reach the
    # npm registry. Build time only: it lives in /tmp, which _clean empties.
    if HOST_CA_BUNDLE.is_file():
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / _BUILD_CA)
    # Build-time only: keep maintainer scripts from starting daemons inside the chroot, and
    # let dpkg skip its per-file fsyncs (a crashed build is thrown away anyway; the finished
    # tree is synced once before it is published).
    build_only = {
        rootfs / "usr/sbin/policy-rc.d": ("#!/bin/sh\nexit 101\n", 0o755),
        rootfs / "etc/dpkg/dpkg.cfg.d/voidrun-build-unsafe-io": ("force-unsafe-io\n", 0o644),
    }
    for path, (text, mode) in build_only.items():
        _write_text(path, text, mode=mode)
    try:
        with _chroot_mounts(rootfs):
            report.step("apt install", " ".join(_APT_AFTER_DEBOOTSTRAP))
            apt = ["apt-get", "-y", "-o", "Dpkg::Options::=--force-confold"]
            for args in (
                ["update"],
                ["upgrade"],
                ["install", "--no-install-recommends", *_APT_AFTER_DEBOOTSTRAP],
            ):
                _chroot_stream(rootfs, [*apt, *args], "apt install", APT_TIMEOUT, report)
            report.step("npm install tsx")
            _chroot_stream(
                rootfs,
                ["npm", "install", "-g", "--no-fund", "--no-audit", *NPM_GLOBAL_PACKAGES],
                "npm install tsx",
                NPM_TIMEOUT,
                report,
                hint="check that the npm registry is reachable",
            )
            report.step("configure")
            _configure(rootfs)
            report.step("verify")
            _verify(rootfs)
    finally:
        for path in build_only:
            path.unlink(missing_ok=True)
    _clean(rootfs)


# Documentation, manual pages and translations are ~80 MB that no sandbox reads (there is no
# man(1)); copyright files stay. The same rules keep later installs in a sandbox lean.
_DPKG_SLIM = """\
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
"""


def _configure(rootfs: Path) -> None:
    """Files a sandbox relies on: a hostname and hosts file (the driver may bind its own over
    them), root's home with a prompt the SDK's terminal recognises, and empty mount points
    the driver binds its agent and runtime state onto (an overlay lower layer is read-only,
    so they must exist in the image)."""
    _write_text(rootfs / "etc/hostname", HOSTNAME_PLACEHOLDER + "\n")
    _write_text(
        rootfs / "etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME_PLACEHOLDER}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    root_home = rootfs / "root"
    root_home.mkdir(mode=0o700, exist_ok=True)
    bashrc = root_home / ".bashrc"
    skel = rootfs / "etc/skel/.bashrc"
    text = bashrc.read_text() if bashrc.exists() else skel.read_text() if skel.exists() else ""
    marker = "# voidrun: root prompt; the SDK's terminal waits for one ending in '# '"
    if marker not in text:
        text += f"\n{marker}\nPS1='{ROOT_PROMPT}'\n"
    _write_text(bashrc, text)
    for mount_point in SANDBOX_MOUNT_POINTS:
        (rootfs / mount_point).mkdir(mode=0o755, parents=True, exist_ok=True)
    # A sandbox is disposable and root owns it: let `pip install x` work there as users of
    # hosted sandboxes expect, instead of refusing with PEP 668's "externally-managed-environment".
    _write_text(rootfs / "etc/pip.conf", "[global]\nbreak-system-packages = true\n")


def _verify(rootfs: Path) -> None:
    """Fail the build, not the first sandbox, if an interpreter the SDK uses is broken."""
    checks: list[tuple[list[str], str]] = [
        (["python3", "-c", "print(1+1)"], "2"),
        (["node", "-e", "console.log(1+1)"], "2"),
        (["tsx", "-e", "console.log(1+1)"], "2"),
        (["bash", "-c", "echo $((1+1))"], "2"),
    ]
    for argv, expected in checks:
        out = _chroot_output(rootfs, argv)
        if out.strip() != expected:
            raise ImageBuildError(
                f"image check failed: {' '.join(argv)!r} printed {out.strip()!r}, "
                f"expected {expected!r}"
            )
    prompt = _chroot_output(rootfs, ["bash", "-ic", 'printf "%s" "${PS1@P}"'])
    if not prompt.endswith("# "):
        raise ImageBuildError(f"root prompt {prompt!r} does not end in '# '")


def _clean(rootfs: Path) -> None:
    """Drop caches and build leftovers: they only make every image copy bigger."""
    for pattern in (
        "var/lib/apt/lists/*",
        "var/cache/apt/*.bin",
        "var/cache/apt/archives/*.deb",
        "var/cache/apt/archives/partial/*",
        "var/cache/debconf/*-old",
        "var/lib/dpkg/*-old",
        "root/.npm",
        "root/.cache",
        "root/.bash_history",
        "tmp/*",
        "var/tmp/*",
        "var/log/apt/*",
        "var/log/*.log",
        # what debootstrap unpacked before the dpkg excludes above were in place
        "usr/share/man/*",
        "usr/share/info/*",
        "usr/share/locale/*",
    ):
        for path in rootfs.glob(pattern):
            if path.name != "locale.alias":
                _remove_path(path)
    for path in rootfs.glob("usr/share/doc/*/*"):
        if path.name != "copyright":
            _remove_path(path)
    # Plain file, not a link to the host's: the sandbox driver binds its own over it.
    _write_text(rootfs / "etc/resolv.conf", _sandbox_resolv_conf())


def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _sources_list(mirror: str) -> str:
    lines = [f"deb {mirror} {SUITE} main", f"deb {mirror} {SUITE}-updates main"]
    if mirror.rstrip("/") in (DEFAULT_MIRROR, "https://deb.debian.org/debian"):
        # Security updates live in a separate archive; only its location on the default
        # mirror is known, a custom mirror is trusted to carry what its owner wants.
        lines.append(f"deb {mirror.rstrip('/')}-security {SUITE}-security main")
    return "\n".join(lines) + "\n"


def _host_resolv_conf() -> str:
    try:
        return Path("/etc/resolv.conf").read_text()
    except OSError:
        return ""


def _sandbox_resolv_conf() -> str:
    """The host's name servers minus loopback ones, which are unreachable from a sandbox."""
    servers = []
    for line in _host_resolv_conf().splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            if not (fields[1].startswith("127.") or fields[1] == "::1"):
                servers.append(fields[1])
    return "".join(f"nameserver {s}\n" for s in servers)


# --- running commands --------------------------------------------------------------------------


class _Reporter:
    """Tracks the current step so streamed log lines can be reported against it."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._index = -1
        self._step = ""

    def step(self, step: str, detail: str = "") -> None:
        self._index = _STEPS.index(step)
        self._step = step
        self._emit(self._index, detail)

    def line(self, detail: str) -> None:
        self._emit(max(self._index, 0), detail)

    def done(self, detail: str) -> None:
        self._emit(len(_STEPS), detail)

    def _emit(self, done: int, detail: str) -> None:
        if self._callback is not None:
            self._callback(BuildProgress(self._step, done, len(_STEPS), detail))


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


# --- host checks, mounts, filesystem -----------------------------------------------------------

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


def _remove_stale(target: Path) -> None:
    """Clean what crashed builds of this tag left: partial dirs and a manifest-less target."""
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        _remove_tree(stale)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        _remove_tree(stale)
    if os.path.lexists(target) and _read_manifest(target) is None:
        _remove_tree(target)


def _move_into_place(partial: Path, target: Path) -> None:
    """Rename the finished build over ``target``, moving any previous image aside first.

    rename(2) cannot replace a non-empty directory, so an existing image is renamed out of the
    way (its manifest going first, so it is never half-visible as complete) and deleted after.
    """
    old: Path | None = None
    if os.path.lexists(target):
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        (target / MANIFEST).unlink(missing_ok=True)
        os.rename(target, old / "image")
    os.rename(partial, target)
    _fsync_dir(target.parent)
    if old is not None:
        _remove_tree(old)


def _disk_usage(root: Path) -> int:
    """Bytes allocated on disk for the tree, counting hard-linked inodes once (like ``du``)."""
    total = 0
    seen: set[int] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1:
                if st.st_ino in seen:
                    continue
                seen.add(st.st_ino)
            total += st.st_blocks * 512
    return total + os.lstat(root).st_blocks * 512


@contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """Serialise builds of one tag across processes (CLI and server may both build)."""
    lock_path = target.parent / f".{target.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _cached(images_root: Path, target: Path, uid_base: int) -> BuiltImage | None:
    manifest = _read_manifest(target)
    if manifest is None or manifest.get("uid_base") != uid_base:
        return None
    return _built_image(images_root, manifest)


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("name") != directory.parent.name or data.get("tag") != directory.name:
        return None
    if not (directory / "rootfs").is_dir():
        return None
    return data


def _built_image(images_root: Path, manifest: dict[str, Any]) -> BuiltImage | None:
    try:
        built_at = datetime.fromisoformat(str(manifest["built_at"]))
        size = int(manifest["size_bytes"])
    except (KeyError, TypeError, ValueError):
        return None
    name, tag = str(manifest["name"]), str(manifest["tag"])
    return BuiltImage(
        name=name,
        tag=tag,
        rootfs=image_dir(images_root, name, tag) / "rootfs",
        size_bytes=size,
        built_at=built_at,
    )


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a regular file, replacing a symlink rather than writing through it to the host."""
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_component(what: str, value: str) -> None:
    if not value or value in (".", "..") or "/" in value or value.startswith("."):
        raise ValueError(f"invalid {what}: {value!r}")
