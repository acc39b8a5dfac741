"""The namespace driver's per-sandbox uid range allocator (no sandboxes needed)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from voidrun_server.drivers.base import DriverError
from voidrun_server.drivers.namespace.uidrange import (
    DEFAULT_FIRST_BASE,
    DEFAULT_MAX_RANGES,
    IMAGE_UID_BASE,
    RANGE_SIZE,
    UidRanges,
    parse_subid,
)


def make(tmp_path: Path, **kwargs: object) -> UidRanges:
    (tmp_path / "state").mkdir(exist_ok=True)
    kwargs.setdefault("subid_files", ())
    return UidRanges(tmp_path / "state" / ".uid-ranges", **kwargs)  # type: ignore[arg-type]


def test_default_area_is_systemds_unused_block() -> None:
    assert DEFAULT_FIRST_BASE == 0x70000000
    assert DEFAULT_FIRST_BASE + DEFAULT_MAX_RANGES * RANGE_SIZE == 0x7FFE0000


def test_parse_subid(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("# x\nalice:100000:65536\n1001:165536:65536\n\nbad\nbob:x:1\nc:5:0\n")
    assert parse_subid(path) == [(100000, 65536), (165536, 65536)]
    assert parse_subid(tmp_path / "missing") == []


def test_allocation_skips_reserved_and_reuses_released(tmp_path: Path) -> None:
    subuid = tmp_path / "subuid"
    subuid.write_text(f"alice:{IMAGE_UID_BASE + RANGE_SIZE + 7}:10\n")
    ranges = make(tmp_path, first=IMAGE_UID_BASE, max_ranges=5, subid_files=(subuid,))
    for name in "abcd":  # live sandboxes have run dirs (markers without one are stale)
        (tmp_path / "state" / (name * 24)).mkdir()
    a = ranges.allocate("a" * 24)
    b = ranges.allocate("b" * 24, avoid=[(IMAGE_UID_BASE + 3 * RANGE_SIZE, 1)])
    # 100000 is the image range, the next one overlaps alice, the one after is avoided
    assert (a, b) == (IMAGE_UID_BASE + 2 * RANGE_SIZE, IMAGE_UID_BASE + 4 * RANGE_SIZE)
    assert ranges.allocate("c" * 24) == IMAGE_UID_BASE + 3 * RANGE_SIZE
    with pytest.raises(DriverError, match="no free host uid range"):
        ranges.allocate("d" * 24)
    ranges.release("a" * 24, a)
    assert ranges.allocate("d" * 24) == a
    ranges.release("b" * 24)  # found by scanning when the record is gone
    assert ranges.owner(b) is None


def test_stale_marker_is_reclaimed_when_full(tmp_path: Path) -> None:
    ranges = make(tmp_path, max_ranges=1)
    base = ranges.allocate("d" * 24)  # its run dir never existed: a crash mid-create
    assert ranges.allocate("e" * 24) == base
    (tmp_path / "state" / ("e" * 24)).mkdir()
    with pytest.raises(DriverError):
        ranges.allocate("f" * 24)


def test_concurrent_allocations_are_distinct(tmp_path: Path) -> None:
    ranges = make(tmp_path, max_ranges=64)
    got: list[int] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        base = ranges.allocate(f"{i:024x}")
        with lock:
            got.append(base)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 40
    assert sorted(int(n) for n in os.listdir(ranges.directory) if n.isdigit()) == sorted(got)


def test_area_must_fit_below_uid_max(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make(tmp_path, first=2**32 - RANGE_SIZE, max_ranges=2)


def test_marker_off_the_grid_still_blocks_its_ids(tmp_path: Path) -> None:
    """A marker left by a different VOIDRUN_SANDBOX_UID_BASE overlaps two slots of this grid:
    neither may be handed out while its sandbox lives."""
    first = DEFAULT_FIRST_BASE
    ranges = make(tmp_path, first=first, max_ranges=3)
    (tmp_path / "state" / ("o" * 24)).mkdir()
    ranges.directory.mkdir(mode=0o700)
    os.symlink("o" * 24, ranges.directory / str(first + RANGE_SIZE // 2))
    assert ranges.allocate("a" * 24) == first + 2 * RANGE_SIZE


def test_the_kept_view_follows_another_process_s_changes(tmp_path: Path) -> None:
    """Two objects on one directory stand for two processes: each sees what the other did."""
    one = make(tmp_path, max_ranges=4)
    other = UidRanges(one.directory, first=one.first, max_ranges=4, subid_files=())
    first = one.allocate("a" * 24)
    taken_by_other = other.allocate("b" * 24)
    assert taken_by_other != first
    time.sleep(0.05)  # a directory mtime of its own for each change (coarse clocks)
    third = one.allocate("c" * 24)  # one's view is stale: it lists again
    assert third not in (first, taken_by_other)
    time.sleep(0.05)
    other.release("b" * 24, taken_by_other)
    time.sleep(0.05)
    assert one.allocate("d" * 24) == taken_by_other  # lowest first: the freed slot again


def test_a_slot_taken_behind_the_view_s_back_is_skipped(tmp_path: Path) -> None:
    ranges = make(tmp_path, max_ranges=3)
    first = ranges.allocate("a" * 24)
    # a marker the view cannot know of (same mtime as its own last change, say)
    os.symlink("x" * 24, ranges.directory / str(first + RANGE_SIZE))
    ranges._view_mtime = os.stat(ranges.directory).st_mtime_ns
    assert ranges.allocate("b" * 24) == first + 2 * RANGE_SIZE
    os.unlink(ranges.directory / str(first + RANGE_SIZE))  # the stale view is listed again
    assert ranges.allocate("c" * 24) == first + RANGE_SIZE
