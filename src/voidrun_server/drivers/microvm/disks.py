"""The guest's block devices, as files on the host.

* **Image disk** (read-only, shared by every VM of one image): the image directories
  (``rootfs`` + ``layers``) are uid-shifted on disk (uid N inside is ``image base + N``). They
  are attached through idmapped mounts that show the base as 0 (``namespace/idmount.py``),
  stacked with a read-only overlayfs when there are layers (whiteouts apply), and
  ``mkfs.ext4 -d`` copies that view (owners, modes, links, device nodes) into an ext4 file
  without a journal. Built once per image, cached under ``<cache>/images/<hash>.ext4``; no
  per-file ``chown`` pass is needed.
* **Agent disk** (read-only, shared): the agent package and its bundled interpreter
  (``agent_launch.install_agent``, ``agent_runtime.install_runtime``) as ``voidrun_agent/``
  and ``runtime/``, mounted at /opt/voidrun in the guest; cached by both fingerprints.
* **Sandbox disk**: the namespace driver's per-sandbox sparse ext4 (``namespace/disk.py``,
  exactly ``disk_mb``, with ``upper/`` and ``work/``), so ENOSPC inside is the limit.
* **Config disk**: a few KiB of text per boot (``guest_init.py`` says what is in it).

Everything blocks: call from worker threads.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from voidrun_server.drivers.base import DriverError
from voidrun_server.drivers.namespace import idmount

__all__ = ["agent_disk", "config_disk", "image_disk"]

MKFS_TIMEOUT = 600.0
DISK_VERSION = 1  # bump when the layout of the cached disks changes


def _tree_bytes(root: Path) -> tuple[int, int]:
    """(allocated bytes, entries) under ``root`` without crossing into other mounts."""
    total, count = 0, 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                count += 1
                st = entry.stat(follow_symlinks=False)
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total, count


def _mkfs(source: Path, target: Path, *, label: str, journal: bool) -> None:
    """An ext4 file holding a copy of the tree at ``source``, sized to fit with room to spare."""
    used, entries = _tree_bytes(source)
    size_mb = max(64, (used * 13 // 10 + entries * 512) // (1 << 20) + 64)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.truncate(size_mb << 20)
    argv = [
        "mkfs.ext4",
        "-q",
        "-F",
        "-L",
        label,
        "-b",
        "4096",
        "-m",
        "0",
        "-N",
        str(entries + 4096),
    ]
    argv += ["-E", "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0"]
    if not journal:
        argv += ["-O", "^has_journal"]
    argv += ["-d", str(source), str(tmp), f"{size_mb}M"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=MKFS_TIMEOUT, check=False
        )
        if done.returncode != 0:
            raise DriverError("mkfs.ext4 -d failed", done.stderr.strip()[-800:])
        os.chmod(tmp, 0o644)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _key(parts: Sequence[object]) -> str:
    digest = hashlib.sha256(f"v{DISK_VERSION}".encode())
    for part in parts:
        digest.update(str(part).encode() + b"\0")
    return digest.hexdigest()[:20]


def _cached(directory: Path, name: str) -> tuple[Path, bool]:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    path = directory / name
    return path, path.is_file()


def image_disk(cache_dir: Path, rootfs: Path, layers: Sequence[Path], deadline: float) -> Path:
    """The read-only ext4 of ``layers`` over ``rootfs`` (owners un-shifted), built once."""
    dirs = [*layers, rootfs]
    stats = []
    for d in dirs:
        try:
            found = os.stat(d)
        except OSError as exc:
            raise DriverError(f"image directory {d} is unusable", str(exc)) from exc
        stats.append(
            (str(d.resolve()), found.st_ino, found.st_mtime_ns, found.st_uid, found.st_gid)
        )
    target, ready = _cached(cache_dir / "images", f"{_key(stats)}.ext4")
    if ready:
        return target
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            work = Path(tmp)
            views = []
            try:
                for i, (d, st) in enumerate(zip(dirs, stats, strict=True)):
                    view = work / f"l{i}"
                    view.mkdir()
                    idmount.mount_idmapped(
                        d, view, idmount.IdRange(st[3], 0), idmount.IdRange(st[4], 0), deadline
                    )
                    views.append(view)
                source = views[0]
                if len(views) > 1:
                    source = work / "merged"
                    source.mkdir()
                    lower = ":".join(str(v) for v in views)
                    subprocess.run(
                        [
                            "mount",
                            "-t",
                            "overlay",
                            "overlay",
                            "-o",
                            f"ro,lowerdir={lower}",
                            str(source),
                        ],
                        check=True,
                        capture_output=True,
                        timeout=60,
                    )
                    views.insert(0, source)
                _mkfs(source, target, label="voidrun-image", journal=False)
            except subprocess.CalledProcessError as exc:
                raise DriverError(
                    "cannot stack the image layers", exc.stderr.decode()[-500:]
                ) from exc
            finally:
                for view in views:
                    idmount.unmount_detach(view)
    return target


def agent_disk(cache_dir: Path, agent_dir: Path, runtime_dir: Path) -> Path:
    """The read-only ext4 with ``voidrun_agent/`` and ``runtime/``, cached by fingerprint."""
    target, ready = _cached(cache_dir / "agent", f"{_key([agent_dir.name, runtime_dir.name])}.ext4")
    if ready:
        return target
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".build-") as tmp:
            os.chmod(tmp, 0o755)
            shutil.copytree(agent_dir, Path(tmp) / "voidrun_agent", symlinks=True)
            shutil.copytree(runtime_dir, Path(tmp) / "runtime", symlinks=True)
            _mkfs(Path(tmp), target, label="voidrun-agent", journal=False)
    return target


def config_disk(path: Path, hostname: str, env_json: str, argv: Sequence[str], owner: int) -> None:
    """Write this boot's settings (see ``guest_init.py``), NUL-padded to whole 4 KiB blocks."""
    for part in (hostname, env_json, *argv):
        if "\n" in part or "\0" in part:
            raise DriverError("invalid guest setting", f"{part[:40]!r} has a newline or NUL")
    body = "\n".join([hostname, env_json, *argv]).encode() + b"\n"
    body += b"\0" * (-len(body) % 4096)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, body)
        os.fchown(fd, owner, owner)
    finally:
        os.close(fd)
