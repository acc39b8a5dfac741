"""Kept detached clones of image directories: a clone always shows what is at the path now
(real mounts; root)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest

from voidrun_server.drivers.namespace import imageclones

pytestmark = pytest.mark.root

OPEN_TREE = 428  # the generic syscall table (x86_64, aarch64)


def _listing(fd: int) -> list[str]:
    try:
        return sorted(os.listdir(f"/proc/self/fd/{fd}"))
    finally:
        os.close(fd)


def test_clones_follow_the_directory_at_the_path(tmp_path: Path) -> None:
    image = tmp_path / "rootfs"
    image.mkdir()
    (image / "old").touch()
    assert _listing(imageclones.clone_image(image, OPEN_TREE)) == ["old"]
    (image / "added").touch()  # the same directory: a kept clone sees its changes
    assert _listing(imageclones.clone_image(image, OPEN_TREE)) == ["added", "old"]

    shutil.rmtree(image)  # deleted and built again at the same path
    image.mkdir()
    (image / "new").touch()
    assert _listing(imageclones.clone_image(image, OPEN_TREE)) == ["new"]

    shutil.rmtree(image)
    with pytest.raises(OSError) as gone:
        imageclones.clone_image(image, OPEN_TREE)
    assert gone.value.errno == errno.ENOENT


def test_the_kept_clones_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageclones, "LIMIT", 3)
    for n in range(6):
        image = tmp_path / f"image{n}"
        image.mkdir()
        os.close(imageclones.clone_image(image, OPEN_TREE))
    assert len(imageclones._kept) <= 3
