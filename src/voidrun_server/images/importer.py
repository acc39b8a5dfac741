"""Import an image from a host path into the same on-disk template format ``code`` uses.

Blocking (run it in a worker thread). Layout, per org::

    <images_root>/orgs/<org_id>/<name>/<tag>/rootfs/          the tree, owned uid_base + N
    <images_root>/orgs/<org_id>/<name>/<tag>/manifest.json    written last (``manifest.py``)
    <images_root>/orgs/<org_id>/<name>/.<tag>.partial-XXXX    the build in progress
    <images_root>/.store/                                     files shared between imports

Everything a build writes lives in its partial directory until the final rename; a failed or
cancelled build removes it, and :func:`remove_partials` removes what a killed server left.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from .cas import ContentStore
from .chroot import _remove_tree
from .entries import Readable, UnpackError, tar_entries
from .manifest import (
    MANIFEST,
    BuiltImage,
    _build_lock,
    _disk_usage,
    _move_into_place,
    _remove_stale,
    _write_json_atomic,
    find_built_image,
    image_dir,
)
from .progress import BuildProgress, ProgressCallback
from .sources import ImageConfig, Source, layer_entries, open_source, rootfs_entries
from .transfer import EndChecked
from .unpack import Limits, RootfsWriter, UnpackStats

ORGS_DIR = "orgs"
# Made when the image lacks them: what the driver mounts onto, and a home for root.
MOUNT_POINTS = ("opt/voidrun", "run/voidrun", "tmp", "proc", "dev", "root", "etc")


@dataclass(frozen=True)
class ImportRequest:
    images_root: Path
    org_id: str | None
    """None: a system image (``<images_root>/<name>/<tag>``, like ``code``)."""
    name: str
    tag: str
    path: Path
    """Resolved host path, already checked against the import directories."""
    source_tag: str
    limits: Limits
    uid_base: int
    dedupe: bool = True


@dataclass(frozen=True)
class Imported:
    built: BuiltImage
    kind: str
    config: ImageConfig
    stats: UnpackStats


def org_images_root(images_root: Path, org_id: str | None) -> Path:
    return images_root if org_id is None else images_root / ORGS_DIR / org_id


def target_dir(req: ImportRequest) -> Path:
    return image_dir(org_images_root(req.images_root, req.org_id), req.name, req.tag)


def import_image(
    req: ImportRequest,
    *,
    progress: ProgressCallback | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Imported:
    def report(step: str, done: int, total: int, detail: str = "") -> None:
        if progress is not None:
            progress(BuildProgress(step, done, total, detail))

    report("prepare", 0, 3, str(req.path))
    return _into_place(req, report, lambda partial: _build(req, partial, report, cancelled))


def receive_image(
    req: ImportRequest,
    stream: Readable,
    config: ImageConfig,
    *,
    cancelled: Callable[[], bool] = lambda: False,
) -> Imported:
    """Write the image of a tar stream (``transfer.export_tar`` on the node that holds it)
    into place like an import: same limits, same checks, files shared through the store."""

    def receive(partial: Path) -> Imported:
        rootfs = partial / "rootfs"
        rootfs.mkdir()
        writer = _writer(req, rootfs, cancelled)
        checked = EndChecked(stream)
        try:
            writer.apply(tar_entries(checked, req.limits.max_bytes))
            checked.check_end()
        finally:
            writer.close()
        built = BuiltImage(req.name, req.tag, rootfs, 0, datetime.now(UTC))
        return Imported(built, "copy", config, writer.stats)

    return _into_place(req, lambda *_: None, receive)


def _writer(req: ImportRequest, rootfs: Path, cancelled: Callable[[], bool]) -> RootfsWriter:
    store = ContentStore(req.images_root) if req.dedupe else None
    return RootfsWriter(
        rootfs, limits=req.limits, uid_base=req.uid_base, store=store, cancelled=cancelled
    )


def _into_place(
    req: ImportRequest,
    report: Callable[[str, int, int, str], None],
    build: Callable[[Path], Imported],
) -> Imported:
    """Build into a partial directory beside the target, then move it into place and write
    its manifest (the image exists only once that is there)."""
    target = target_dir(req)
    for directory in (target.parent.parent, target.parent):
        directory.mkdir(mode=0o755, exist_ok=True, parents=True)
        os.chmod(directory, 0o755)  # sandboxes' helpers traverse to rootfs/
    try:
        return _import_locked(req, target, report, build)
    except BaseException:
        _remove_empty(target)
        raise


def _import_locked(
    req: ImportRequest,
    target: Path,
    report: Callable[[str, int, int, str], None],
    build: Callable[[Path], Imported],
) -> Imported:
    with _build_lock(target):
        _remove_stale(target)
        partial = Path(tempfile.mkdtemp(prefix=f".{req.tag}.partial-", dir=target.parent))
        try:
            imported = build(partial)
            size = _disk_usage(partial / "rootfs")
            report("finalize", imported.stats.entries, imported.stats.entries, "syncing")
            os.sync()  # the manifest must never describe data still only in the page cache
            os.chmod(partial, 0o755)
            _move_into_place(partial, target)
        except BaseException:
            with contextlib.suppress(Exception):
                _remove_tree(partial)
            raise
        manifest = {
            "name": req.name,
            "tag": req.tag,
            "size_bytes": size,
            "built_at": datetime.now(UTC).isoformat(),
            "uid_base": req.uid_base,
            "source": imported.kind,
            "config": imported.config.to_wire(),
            "entries": imported.stats.entries,
            "deduplicated_files": imported.stats.deduplicated,
            "stripped_setuid": imported.stats.stripped_setuid[:100],
        }
        _write_json_atomic(target / MANIFEST, manifest)
    built = find_built_image(org_images_root(req.images_root, req.org_id), req.name, req.tag)
    if built is None:  # pragma: no cover - we just wrote it
        raise UnpackError("image was imported but its manifest is unreadable", str(target))
    return Imported(built, imported.kind, imported.config, imported.stats)


def _build(
    req: ImportRequest,
    partial: Path,
    report: Callable[[str, int, int, str], None],
    cancelled: Callable[[], bool],
) -> Imported:
    scratch = partial / "source"
    source: Source = open_source(req.path, req.source_tag, scratch, req.limits.max_bytes)
    if len(source.layers) > req.limits.max_layers:
        raise UnpackError(
            "too many layers",
            f"{len(source.layers)} > VOIDRUN_IMAGE_MAX_LAYERS ({req.limits.max_layers})",
        )
    rootfs = partial / "rootfs"
    rootfs.mkdir()
    writer = _writer(req, rootfs, cancelled)
    try:
        total = max(1, len(source.layers))
        if source.rootfs is not None:
            report("unpack", 0, 1, f"directory {req.path}")
            writer.apply(rootfs_entries(source.rootfs))
        for i, layer in enumerate(source.layers):
            report("unpack", i, total, f"layer {i + 1}/{total} {layer.digest or layer.path}")
            writer.apply(layer_entries(layer, req.limits.max_bytes - writer.stats.bytes))
        for mount_point in MOUNT_POINTS:
            writer.ensure_dir(mount_point)
    finally:
        writer.close()
    if scratch.exists():
        _remove_tree(scratch)
    report("unpack", total, total, f"{writer.stats.entries} entries")
    return Imported(
        built=BuiltImage(req.name, req.tag, rootfs, 0, datetime.now(UTC)),
        kind=source.kind,
        config=source.config,
        stats=writer.stats,
    )


def remove_partials(images_root: Path, org_id: str, name: str, tag: str) -> None:
    """What a build of ``name:tag`` left behind (partial dirs, a manifest-less target)."""
    try:
        target = image_dir(org_images_root(images_root, org_id), name, tag)
    except ValueError:
        return
    if target.parent.is_dir():
        _remove_stale(target)
        _remove_empty(target)


def remove_image(images_root: Path, rootfs: Path) -> None:
    """Delete an imported image's directory (``rootfs``'s parent) and unshared stored files."""
    directory = rootfs.parent
    orgs = (images_root / ORGS_DIR).resolve()
    if not directory.resolve().is_relative_to(orgs):
        raise ValueError(f"{directory} is not an imported image")
    if directory.exists():
        (directory / MANIFEST).unlink(missing_ok=True)
        _remove_tree(directory)
    _remove_empty(directory)
    ContentStore(images_root).collect()


def _remove_empty(target: Path) -> None:
    """After a delete or a failed build: the tag's lock file, then the name's and the org's
    directories if nothing else is in them. (Builds of one org, name and tag never overlap:
    the database has one row for them.)"""
    if os.path.lexists(target):
        return
    (target.parent / f".{target.name}.lock").unlink(missing_ok=True)
    for empty in (target.parent, target.parent.parent):  # the name's, the org's
        with contextlib.suppress(OSError):
            empty.rmdir()
