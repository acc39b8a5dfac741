"""Image paths as rows hold them (relative to the images directory), and the sweep a node
runs at start for image files no row names any more."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from voidrun_server.images.holdings import unlisted
from voidrun_server.images.locations import located, stored


def test_rows_hold_paths_relative_to_the_images_directory(tmp_path: Path) -> None:
    root = tmp_path / "images"
    assert stored(root, root / "orgs/o/n/t/rootfs") == "orgs/o/n/t/rootfs"
    assert located(root, "orgs/o/n/t/rootfs") == root / "orgs/o/n/t/rootfs"
    assert stored(root, "/elsewhere/rootfs") == "/elsewhere/rootfs"  # older rows: as they are
    assert located(root, "/elsewhere/rootfs") == Path("/elsewhere/rootfs")
    with pytest.raises(ValueError, match="may not leave"):
        located(root, "orgs/../../etc")


def image(root: Path, org: str, name: str, *, age: float) -> Path:
    directory = root / "orgs" / org / name / "1"
    (directory / "rootfs").mkdir(parents=True)
    manifest = directory / "manifest.json"
    manifest.write_text("{}")
    then = time.time() - age
    os.utime(manifest, (then, then))
    return directory / "rootfs"


def test_the_sweep_finds_only_old_images_no_row_names(tmp_path: Path) -> None:
    root = tmp_path / "images"
    gone = image(root, "o1", "gone", age=3600)
    kept = image(root, "o1", "kept", age=3600)
    legacy = image(root, "o2", "legacy", age=3600)
    image(root, "o1", "young", age=5)  # published a moment ago: its row may be coming
    (root / "orgs/o1/gone/.2.partial-x").mkdir()  # a build in progress is not an image
    (root / "code/1.0.0/rootfs").mkdir(parents=True)  # system images are never swept
    listed = {"orgs/o1/kept/1/rootfs", "/elsewhere/images/orgs/o2/legacy/1/rootfs"}
    assert unlisted(root, listed, 600) == [gone]
    assert kept.is_dir() and legacy.is_dir()
    assert unlisted(root, listed | {"orgs/o1/gone/1/rootfs"}, 600) == []
    assert unlisted(tmp_path / "empty", set(), 600) == []
