"""hostclaims: what counts as an overlap, and a claim counts only while its file is locked."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from voidrun_server.config import Settings
from voidrun_server.errors import ConflictError, VoidRunError
from voidrun_server.hostclaims import RANGE_SIZE, Claim, claim, conflicts, live_claims


def settings(tmp_path: Path, name: str, **env: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / name,
        "host_claims_dir": tmp_path / "claims",
        "sandbox_uid_base": 0x40000000,
        "sandbox_uid_ranges": 16,
        "sandbox_subnet": "10.250.1.0/24",
        "cgroup_parent": f"vr-{name}",
    }
    values.update(env)
    return Settings(**values)  # type: ignore[arg-type]


def test_overlaps_name_the_settings(tmp_path: Path) -> None:
    a = Claim.of(settings(tmp_path, "a"), "serve")
    apart = Claim.of(
        settings(
            tmp_path,
            "b",
            sandbox_uid_base=0x40000000 + 16 * RANGE_SIZE,  # ends where a's area ends: no overlap
            sandbox_subnet="10.250.2.0/24",
        ),
        "serve",
    )
    assert conflicts(a, apart) == []
    uid = Claim.of(settings(tmp_path, "b", sandbox_uid_base=0x40000000 + 15 * RANGE_SIZE), "x")
    assert [line.split("(")[-1] for line in conflicts(uid, a)] == [
        "VOIDRUN_SANDBOX_UID_BASE / VOIDRUN_SANDBOX_UID_RANGES)",
        "VOIDRUN_SANDBOX_SUBNET)",
    ]
    wide = Claim.of(
        settings(tmp_path, "c", sandbox_uid_base=0x50000000, sandbox_subnet="10.250.0.0/16"), "x"
    )
    assert conflicts(wide, a) == [
        "sandbox subnet 10.250.0.0/16 overlaps 10.250.1.0/24 (VOIDRUN_SANDBOX_SUBNET)"
    ]
    # <parent>-gvisor of one is another's parent: shared too
    cg = Claim.of(
        settings(
            tmp_path,
            "d",
            sandbox_uid_base=0x50000000,
            sandbox_subnet="10.9.0.0/24",
            cgroup_parent="vr-a-gvisor",
        ),
        "x",
    )
    assert conflicts(cg, a) == ["cgroup names vr-a-gvisor are shared (VOIDRUN_CGROUP_PARENT)"]
    off = Claim.of(settings(tmp_path, "e", sandbox_uid_base=0x50000000, sandbox_network=False), "x")
    assert conflicts(off, a) == []  # no network: no subnet to share


def test_a_claim_blocks_while_held_and_names_its_owner(tmp_path: Path) -> None:
    first = settings(tmp_path, "a")
    fd = claim(first, "voidrun-server serve")
    try:
        with pytest.raises(ConflictError) as info:
            claim(settings(tmp_path, "b", cgroup_parent="vr-b"), "voidrun-server node")
        text = str(info.value)
        assert "VOIDRUN_SANDBOX_UID_BASE" in text and "VOIDRUN_SANDBOX_SUBNET" in text
        assert f"pid {os.getpid()}" in text and str(first.data_dir) in text
    finally:
        os.close(fd)
    # the same data dir again (a restart) replaces its own claim
    os.close(claim(first, "voidrun-server serve"))
    assert len(list((tmp_path / "claims").glob("*.json"))) == 1
    # released: the other server may start now
    os.close(claim(settings(tmp_path, "b"), "voidrun-server node"))


def test_the_claim_of_a_dead_process_does_not_count(tmp_path: Path) -> None:
    first = settings(tmp_path, "a")
    code = (
        "import sys; from voidrun_server.config import Settings; "
        "from voidrun_server.hostclaims import claim; "
        f"claim(Settings(**{{k: v for k, v in {first.model_dump(mode='json')!r}.items() "
        "if k in ('data_dir', 'host_claims_dir', 'sandbox_uid_base', 'sandbox_uid_ranges', "
        "'sandbox_subnet', 'cgroup_parent')}), 'child'); "
        "print('claimed', flush=True); sys.stdin.read()"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "claimed\n"
            [alive] = live_claims(tmp_path / "claims")
            assert (alive.pid, alive.command) == (child.pid, "child")
            with pytest.raises(ConflictError):
                claim(settings(tmp_path, "b"), "x")
        finally:
            child.kill()
    # the file is still there, naming a dead pid, but nobody holds it
    assert len(list((tmp_path / "claims").glob("*.json"))) == 1
    assert live_claims(tmp_path / "claims") == []
    os.close(claim(settings(tmp_path, "b"), "x"))
    # and the next claim deleted it: only b's own file is left
    [left] = (tmp_path / "claims").glob("*.json")
    assert '"command": "x"' in left.read_text()


def test_a_garbled_claim_file_is_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "claims"
    directory.mkdir()
    path = directory / "junk.json"
    path.write_text("{not json")
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)  # even held
        os.close(claim(settings(tmp_path, "a"), "x"))
    finally:
        os.close(fd)


def test_an_unusable_claims_dir_is_a_clear_start_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(VoidRunError) as info:
        claim(settings(tmp_path, "a", host_claims_dir=tmp_path / "file" / "claims"), "x")
    assert "VOIDRUN_HOST_CLAIMS_DIR" in str(info.value)
