"""The build's bookkeeping (cache, atomic publish, cleanup, errors) with debootstrap faked out.

Fast and offline: ``_build_tree`` is replaced by a function that makes a tiny tree, so what is
tested is everything around it. Needs root for chown and mount.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.support.tiers import skipif_tier

from voidrun_server.images import build, chroot, progress
from voidrun_server.images.build import (
    BuildProgress,
    ImageBuildError,
    build_code_image,
    find_built_image,
    image_dir,
)

pytestmark = [
    pytest.mark.root,
    skipif_tier(os.geteuid() != 0, "root", "chown and mount need root"),
]

BASE = 100000


def _fake_tree(rootfs: Path, *, mirror: str, report: object) -> None:
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")


def _failing_tree(exc: BaseException) -> Callable[..., None]:
    def fake(rootfs: Path, *, mirror: str, report: object) -> None:
        _fake_tree(rootfs, mirror=mirror, report=report)
        raise exc

    return fake


@pytest.fixture(autouse=True)
def _fake_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # Patched in ``build``, where build_code_image looks them up (``_check_host`` lives in chroot).
    monkeypatch.setattr(build, "_check_host", lambda: None)
    monkeypatch.setattr(build, "_build_tree", _fake_tree)


def _leftovers(images_root: Path) -> list[str]:
    return sorted(p.name for p in (images_root / "code").iterdir() if ".partial-" in p.name)


def test_build_publishes_image_and_manifest_last(tmp_path: Path) -> None:
    reports: list[BuildProgress] = []
    built = build_code_image(tmp_path, tag="v1", uid_base=BASE, progress=reports.append)

    target = image_dir(tmp_path, "code", "v1")
    assert target == tmp_path / "code" / "v1"
    assert built.rootfs == target / "rootfs"
    assert (built.name, built.tag) == ("code", "v1")
    assert built.size_bytes > 0
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["uid_base"] == BASE
    assert manifest["size_bytes"] == built.size_bytes
    assert "nodejs" in manifest["packages"] and "python3" in manifest["packages"]
    assert os.stat(built.rootfs / "etc/passwd").st_uid == BASE
    assert _leftovers(tmp_path) == []
    assert find_built_image(tmp_path, "code", "v1") == built

    assert reports[-1].done == reports[-1].total
    assert [r.done for r in reports] == sorted(r.done for r in reports)
    steps = [r.step for r in reports]
    assert "shift ownership" in steps and "finalize" in steps


def test_second_call_returns_the_cached_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    monkeypatch.setattr(build, "_build_tree", _failing_tree(AssertionError("rebuilt")))
    reports: list[BuildProgress] = []
    again = build_code_image(tmp_path, tag="v1", uid_base=BASE, progress=reports.append)
    assert again == first
    assert {r.step for r in reports} == {"prepare"}


def test_force_rebuilds_and_replaces(tmp_path: Path) -> None:
    first = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    (first.rootfs / "marker").write_text("old")
    second = build_code_image(tmp_path, tag="v1", uid_base=BASE, force=True)
    assert second.built_at >= first.built_at
    assert not (second.rootfs / "marker").exists()
    assert sorted(p.name for p in (tmp_path / "code").iterdir()) == [".v1.lock", "v1"]


def test_a_build_with_other_packages_is_not_a_cache_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release that changes the package list rebuilds the same tag once, then caches it."""
    first = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    (first.rootfs / "marker").write_text("old")
    monkeypatch.setattr(build, "_CACHE_KEY", {**build._CACHE_KEY, "packages": ["changed"]})
    second = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    assert not (second.rootfs / "marker").exists()
    manifest = json.loads((tmp_path / "code" / "v1" / "manifest.json").read_text())
    assert manifest["packages"] == ["changed"]
    monkeypatch.setattr(build, "_build_tree", _failing_tree(AssertionError("rebuilt")))
    assert build_code_image(tmp_path, tag="v1", uid_base=BASE) == second


def test_another_uid_base_is_not_a_cache_hit(tmp_path: Path) -> None:
    build_code_image(tmp_path, tag="v1", uid_base=BASE)
    other = build_code_image(tmp_path, tag="v1", uid_base=200000)
    assert os.stat(other.rootfs / "etc/passwd").st_uid == 200000


@pytest.mark.parametrize("exc", [ImageBuildError("boom"), KeyboardInterrupt()])
def test_failed_build_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    monkeypatch.setattr(build, "_build_tree", _failing_tree(exc))
    with pytest.raises(type(exc)):
        build_code_image(tmp_path, tag="v1", uid_base=BASE)
    assert find_built_image(tmp_path, "code", "v1") is None
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "code" / "v1").exists()


def test_failed_forced_rebuild_keeps_the_previous_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    monkeypatch.setattr(build, "_build_tree", _failing_tree(ImageBuildError("boom")))
    with pytest.raises(ImageBuildError):
        build_code_image(tmp_path, tag="v1", uid_base=BASE, force=True)
    assert find_built_image(tmp_path, "code", "v1") == first


def test_partial_and_manifestless_dirs_are_not_images_and_get_cleaned(tmp_path: Path) -> None:
    good = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    manifest = (good.rootfs.parent / "manifest.json").read_text()
    code = tmp_path / "code"
    # a crashed build: even a manifest inside a partial dir does not make it an image
    partial = code / ".v2.partial-dead"
    (partial / "rootfs/etc").mkdir(parents=True)
    (partial / "manifest.json").write_text(manifest.replace('"v1"', '"v2"'))
    # crashed between the rename and the manifest
    (code / "v2/rootfs").mkdir(parents=True)
    assert find_built_image(tmp_path, "code", "v2") is None

    built = build_code_image(tmp_path, tag="v2", uid_base=BASE)
    assert find_built_image(tmp_path, "code", "v2") == built
    assert _leftovers(tmp_path) == []


def test_stale_partial_with_a_leftover_mount_is_unmounted_not_emptied(tmp_path: Path) -> None:
    host_dir = tmp_path / "host-dev"
    host_dir.mkdir()
    (host_dir / "null").write_text("precious")
    point = tmp_path / "images/code/.v1.partial-dead/rootfs/dev"
    point.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(host_dir), str(point)], check=True)
    try:
        build_code_image(tmp_path / "images", tag="v1", uid_base=BASE)
    finally:
        subprocess.run(["umount", str(point)], check=False, capture_output=True)
    assert (host_dir / "null").read_text() == "precious"
    assert _leftovers(tmp_path / "images") == []


@pytest.mark.parametrize(
    "content",
    [
        None,
        "not json",
        "[]",
        '{"name": "code", "tag": "other", "size_bytes": 1, "built_at": "2024-01-01T00:00:00"}',
        '{"name": "code", "tag": "v1", "size_bytes": 1}',
    ],
)
def test_find_built_image_rejects_bad_manifests(tmp_path: Path, content: str | None) -> None:
    target = image_dir(tmp_path, "code", "v1")
    (target / "rootfs").mkdir(parents=True)
    if content is not None:
        (target / "manifest.json").write_text(content)
    assert find_built_image(tmp_path, "code", "v1") is None


def test_find_built_image_needs_the_rootfs(tmp_path: Path) -> None:
    built = build_code_image(tmp_path, tag="v1", uid_base=BASE)
    chroot._remove_tree(built.rootfs)
    assert find_built_image(tmp_path, "code", "v1") is None


@pytest.mark.parametrize("tag", ["", ".", "..", "a/b", ".hidden"])
def test_image_dir_rejects_unsafe_tags(tmp_path: Path, tag: str) -> None:
    with pytest.raises(ValueError):
        image_dir(tmp_path, "code", tag)


def test_missing_host_tool_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()  # the real _check_host
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    with pytest.raises(ImageBuildError, match="debootstrap not found: apt-get install debootstrap"):
        chroot._check_host()


def test_non_root_is_told_to_run_as_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(ImageBuildError, match="needs root"):
        chroot._check_host()


def test_stream_reports_lines_and_explains_failures() -> None:
    reports: list[BuildProgress] = []
    reporter = progress._Reporter(reports.append)
    reporter.step("debootstrap")
    with pytest.raises(ImageBuildError, match=r"(?s)exited with 3; try again\..*second"):
        chroot._stream(
            ["sh", "-c", "echo first; echo second >&2; exit 3"],
            step="debootstrap",
            timeout=60,
            report=reporter,
            env=dict(os.environ),
            hint="try again",
        )
    assert [r.detail for r in reports[1:]] == ["first", "second"]


def test_stream_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    reporter = progress._Reporter(None)
    pids = tmp_path / "pids"
    with pytest.raises(ImageBuildError, match="timed out"):
        # one grandchild keeps the pipe open (only killing the group ends the read), the other
        # does not (nothing but killing the group ends it)
        script = f"sleep 600.25 >/dev/null 2>&1 & echo $! > {pids}; sleep 61.25 & echo $! >> {pids}"
        chroot._stream(
            ["sh", "-c", f"{script}; echo $$ >> {pids}; exec sleep 61.25"],
            step="apt install",
            timeout=0.5,
            report=reporter,
            env=dict(os.environ),
            hint="",
        )
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 3

    def alive(pid: int) -> bool:
        """Still our sleep (not a reused pid) and not a zombie waiting for its parent."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return b".25" in cmdline and state != "Z"

    deadline = time.monotonic() + 30  # SIGKILL is immediate; the deadline only covers a slow host
    while any(alive(pid) for pid in started):
        assert time.monotonic() < deadline, f"still running: {[p for p in started if alive(p)]}"
        time.sleep(0.02)


def test_mountinfo_escapes_are_decoded() -> None:
    assert chroot._unescape_mountinfo(r"/a\040b\134c") == "/a b\\c"


def test_chroot_mounts_are_undone_even_on_error(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    with pytest.raises(RuntimeError), chroot._chroot_mounts(rootfs):
        assert (rootfs / "dev/null").exists()
        assert (rootfs / "proc/self").exists()
        raise RuntimeError("apt failed")
    assert chroot._mounts_under(rootfs) == []
    assert not (rootfs / "dev/null").exists()
