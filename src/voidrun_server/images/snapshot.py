"""Snapshot images on disk: one layer copied from a sandbox, over the image it ran on.

A snapshot image has the same layout as an imported one (``importer.py``)::

    <images_root>/orgs/<org_id>/<name>/<tag>/rootfs/          the layer (what the sandbox
                                                               changed, deletions as whiteouts)
    <images_root>/orgs/<org_id>/<name>/<tag>/manifest.json    written last; lists the layers
                                                               below (``layers``)
    <images_root>/orgs/<org_id>/<name>/.<tag>.partial-XXXX    the snapshot in progress

Sandboxes made from it stack ``rootfs`` over ``layers`` (``SandboxSpec.layers``), so making a
snapshot copies only the sandbox's own writes: never the image below, which stays shared. The
layer itself is written by the driver (``Exportable.export_layer``) into the partial directory
between :func:`begin` and :func:`publish`; :func:`abandon` removes it after a failure.
Blocking (worker threads).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .chroot import _remove_tree
from .importer import _remove_empty, org_images_root
from .manifest import (
    MANIFEST,
    BuiltImage,
    _disk_usage,
    _move_into_place,
    _remove_stale,
    _write_json_atomic,
    find_built_image,
    image_dir,
)

__all__ = ["SnapshotTarget", "abandon", "begin", "publish"]

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class SnapshotTarget:
    images_root: Path
    org_id: str
    name: str
    tag: str

    @property
    def directory(self) -> Path:
        return image_dir(org_images_root(self.images_root, self.org_id), self.name, self.tag)


def begin(target: SnapshotTarget) -> Path:
    """A fresh partial directory with an empty ``rootfs/`` for the driver to fill."""
    final = target.directory
    for directory in (final.parent.parent, final.parent):
        directory.mkdir(mode=0o755, exist_ok=True, parents=True)
        os.chmod(directory, 0o755)  # sandboxes' helpers traverse to rootfs/
    _remove_stale(final)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.tag}.partial-", dir=final.parent))
    (partial / "rootfs").mkdir(mode=0o755)
    return partial


def publish(target: SnapshotTarget, partial: Path, manifest: dict[str, Any]) -> BuiltImage:
    """Flush the layer, move it into place and write its manifest (last: "complete")."""
    final = target.directory
    size = _disk_usage(partial / "rootfs")
    _syncfs(partial)  # the manifest must never describe data still only in the page cache
    os.chmod(partial, 0o755)
    _move_into_place(partial, final)
    _write_json_atomic(
        final / MANIFEST,
        {
            "name": target.name,
            "tag": target.tag,
            "size_bytes": size,
            "built_at": datetime.now(UTC).isoformat(),
            "source": "snapshot",
            **manifest,
        },
    )
    built = find_built_image(org_images_root(target.images_root, target.org_id), target.name,
                             target.tag)  # fmt: skip
    if built is None:  # pragma: no cover - we just wrote it
        raise OSError(f"snapshot {final} was written but its manifest is unreadable")
    return built


def abandon(target: SnapshotTarget, partial: Path | None) -> None:
    """Remove what a failed snapshot wrote (and the name's directory if it is empty now)."""
    if partial is not None:
        with contextlib.suppress(FileNotFoundError):
            _remove_tree(partial)
    _remove_empty(target.directory)


def _syncfs(path: Path) -> None:
    """``syncfs(2)`` of the filesystem holding ``path``: only that one, unlike ``sync``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}")
    finally:
        os.close(fd)
