"""Images on disk: where they live, their manifests, and publishing a finished build.

An image is a plain directory tree that sandboxes use as the read-only lower layer of their
overlay root. Layout on disk::

    <images_root>/<name>/<tag>/rootfs/         the tree
    <images_root>/<name>/<tag>/manifest.json   written last: its presence means "complete"
    <images_root>/<name>/.<tag>.partial-XXXX   a build in progress (or a crashed one)
    <images_root>/<name>/.<tag>.lock           serialises builds of one tag
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from voidrun_server.images.chroot import _remove_tree

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class BuiltImage:
    """A complete image on disk, as described by its manifest."""

    name: str
    tag: str
    rootfs: Path
    size_bytes: int
    built_at: datetime


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
    manifest = read_manifest(image_dir(images_root, name, tag))
    if manifest is None:
        return None
    return _built_image(images_root, manifest)


def _cached(
    images_root: Path, target: Path, uid_base: int, key: dict[str, object] | None = None
) -> BuiltImage | None:
    """The complete image at ``target`` if it was built for ``uid_base`` and its manifest
    holds every item of ``key`` (what the build put in it), else None."""
    manifest = read_manifest(target)
    if manifest is None or manifest.get("uid_base") != uid_base:
        return None
    if any(manifest.get(k) != v for k, v in (key or {}).items()):
        return None
    return _built_image(images_root, manifest)


def read_manifest(directory: Path) -> dict[str, Any] | None:
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


def _check_component(what: str, value: str) -> None:
    if not value or value in (".", "..") or "/" in value or value.startswith("."):
        raise ValueError(f"invalid {what}: {value!r}")


# --- publishing --------------------------------------------------------------------------------


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


def _remove_stale(target: Path) -> None:
    """Clean what crashed builds of this tag left: partial dirs and a manifest-less target."""
    for stale in target.parent.glob(f".{target.name}.partial-*"):
        _remove_tree(stale)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        _remove_tree(stale)
    if os.path.lexists(target) and read_manifest(target) is None:
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
