"""Build the default ``code`` sandbox image: a Debian bookworm root filesystem.

The build needs host root (debootstrap, chroot, mount, chown) and runs synchronously: call it
from the CLI or a worker thread, never from an event loop. Where images live on disk and how a
finished build is published is ``images.manifest``; running commands in the chroot is
``images.chroot``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from voidrun_server.images.chroot import (
    _BUILD_CA,
    _check_host,
    _chroot_mounts,
    _chroot_output,
    _chroot_stream,
    _remove_tree,
    _stream,
    _tool,
)

# CHECK_TIMEOUT moved with the chroot runner; it stays importable from here with the others.
from voidrun_server.images.chroot import CHECK_TIMEOUT as CHECK_TIMEOUT
from voidrun_server.images.manifest import (
    MANIFEST,
    BuiltImage,
    _build_lock,
    _cached,
    _disk_usage,
    _move_into_place,
    _remove_stale,
    _write_json_atomic,
    find_built_image,
    image_dir,
)
from voidrun_server.images.mirror import host_debian_mirror
from voidrun_server.images.progress import (
    BuildProgress,
    ImageBuildError,
    ProgressCallback,
    _Reporter,
)
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
ID_COUNT = 65536

# Real Jupyter kernels for the stateful code interpreter (E2B's port 49999), and what its users'
# code imports first. matplotlib's fonttools wants "python3-scipy | python3-munkres": naming the
# small one keeps scipy, pythran and a C toolchain's headers (~300 MB) out of the image.
INTERPRETER_PACKAGES: tuple[str, ...] = (
    "python3-ipykernel",
    "python3-jupyter-client",
    "python3-matplotlib",
    "python3-numpy",
    "python3-pandas",
    "python3-munkres",
)
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
    *INTERPRETER_PACKAGES,
)
# debootstrap's own dependency resolver cannot handle virtual packages, which npm's ~300 node-*
# dependencies use; these are left to apt inside the chroot. Everything else comes in the one
# debootstrap run.
_APT_AFTER_DEBOOTSTRAP: tuple[str, ...] = ("npm", *INTERPRETER_PACKAGES)
NPM_GLOBAL_PACKAGES: tuple[str, ...] = ("tsx",)

# Mount points the sandbox driver binds its agent and runtime state onto.
SANDBOX_MOUNT_POINTS: tuple[str, ...] = ("opt/voidrun", "run/voidrun")
HOSTNAME_PLACEHOLDER = "sandbox"
ROOT_PROMPT = r"\u@\h:\w\$ "  # "\$" is "#" for uid 0, which is what root sees in the sandbox

DEBOOTSTRAP_TIMEOUT = 30 * 60
APT_TIMEOUT = 30 * 60
NPM_TIMEOUT = 15 * 60

# A complete build whose manifest lists other packages (an older release of this list) is not a
# cache hit: the tree is rebuilt under the same tag.
_CACHE_KEY: dict[str, object] = {
    "packages": list(CODE_PACKAGES),
    "npm_global_packages": list(NPM_GLOBAL_PACKAGES),
}

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def build_code_image(
    images_root: Path,
    *,
    tag: str,
    mirror: str = "",
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
    cached = None if force else _cached(images_root, target, uid_base, _CACHE_KEY)
    if cached is not None:
        report.done(f"using cached image {name}:{tag}")
        return cached
    _check_host()
    mirror = mirror or host_debian_mirror(SUITE) or ""
    if not mirror:
        raise ImageBuildError(
            f"no Debian mirror for {SUITE}: the host's apt sources name none;"
            " set VOIDRUN_DEBIAN_MIRROR to a Debian mirror URL"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Sandboxes' unprivileged helpers must reach rootfs/ even if our umask is strict.
    os.chmod(target.parent, 0o755)
    with _build_lock(target):
        cached = None if force else _cached(images_root, target, uid_base, _CACHE_KEY)
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
            **_CACHE_KEY,
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
        (
            [
                "python3",
                "-c",
                "import ipykernel, jupyter_client, matplotlib, numpy, pandas; print(2)",
            ],
            "2",
        ),
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
    # Security updates live in a separate archive: wherever the host gets its own from.
    security = host_debian_mirror(f"{SUITE}-security")
    if security:
        lines.append(f"deb {security} {SUITE}-security main")
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


def _write_text(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a regular file, replacing a symlink rather than writing through it to the host."""
    if path.is_symlink():
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
