"""The sandbox disk's loop device: found from its mount, released without scanning every
loop device on the host (real loop devices and ext4 mounts; root)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voidrun_server.drivers.namespace import disk

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return disk.DiskTemplates(tmp_path_factory.mktemp("templates")).get(16)


@pytest.fixture
def disks(template: Path, tmp_path: Path) -> Iterator[list[tuple[Path, Path]]]:
    """Two mounted disks: (image, mount point) each; whatever is left is released after."""
    made = []
    for name in ("a", "b"):
        image, mount_point = tmp_path / f"{name}.img", tmp_path / name
        disk.provision_image(template, image)
        mount_point.mkdir()
        disk.mount_image(image, mount_point)
        made.append((image, mount_point))
    yield made
    for image, mount_point in made:
        disk.release(image, mount_point, time.monotonic() + 10)


def _backing(device: str) -> str:
    name = os.path.basename(device)
    with open(f"/sys/block/{name}/loop/backing_file") as f:
        return f.read().strip()


def test_the_mounted_device_is_the_image_s_loop_device(disks: list[tuple[Path, Path]]) -> None:
    (image_a, mount_a), (image_b, mount_b) = disks
    device_a, device_b = disk.mounted_device(mount_a), disk.mounted_device(mount_b)
    assert device_a is not None and device_b is not None and device_a != device_b
    assert _backing(device_a) == str(image_a)
    assert disk.loop_devices_for(image_a) == [device_a]  # the full scan agrees
    assert disk.loop_devices_for(image_a, [device_b]) == []  # b's device is not a's
    assert disk.mounted_device(mount_a.parent) is None  # not a mount point
    assert disk.mounted_device(mount_a / "missing") is None


def test_release_frees_only_its_own_disk(disks: list[tuple[Path, Path]]) -> None:
    (image_a, mount_a), (image_b, mount_b) = disks
    device_b = disk.mounted_device(mount_b)
    disk.release(image_a, mount_a, time.monotonic() + 10)
    assert not os.path.ismount(mount_a)
    assert disk.loop_devices_for(image_a) == []
    assert disk.mounted_device(mount_b) == device_b
    assert disk.loop_devices_for(image_b) == [device_b]
    disk.release(image_a, mount_a, time.monotonic() + 10)  # again: nothing to do, no error
