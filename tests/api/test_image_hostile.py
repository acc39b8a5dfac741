"""Hostile images fail their build with the reason, touch nothing outside their own build
directory and leave nothing behind; a server killed mid-build leaves an ``error`` row and no
partial files after it restarts (docs/images.md, "Limits")."""

from __future__ import annotations

import gzip
import io
import json
import signal
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.test_image_import import import_fails, leftovers, org_dir, wait_built
from tests.support.oci_images import Member, image_config, oci_layout, tar_members
from tests.support.sandboxes import sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]

MAX_BYTES = 32 * 2**20
MAX_LAYERS = 4


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {"VOIDRUN_IMAGE_MAX_BYTES": str(MAX_BYTES), "VOIDRUN_IMAGE_MAX_LAYERS": str(MAX_LAYERS)}
    with sandbox_server(**env) as proc:
        yield proc


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def imports(server: ServerProcess) -> Path:
    return server.data_dir / "imports"


@pytest.fixture(scope="module")
def outside(server: ServerProcess) -> Path:
    """A host directory no build may write into (it must stay empty)."""
    path = server.data_dir / "outside"
    path.mkdir()
    return path


def zeros_layer(size: int) -> bytes:
    """A tiny compressed layer that expands to ``size`` bytes (a bomb, for small limits)."""

    info = tarfile.TarInfo("zeros")
    info.size = size  # a multiple of 512 here: no padding
    chunk = b"\0" * 2**20
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1) as gz:
        gz.write(info.tobuf(tarfile.PAX_FORMAT))
        for _ in range(size // len(chunk)):
            gz.write(chunk)
        gz.write(b"\0" * 1024)  # end of archive
    return out.getvalue()


def hostile_cases(outside: Path) -> dict[str, tuple[list[bytes], str]]:
    return {
        "absolute": ([tar_members(Member("/etc/evil", b"x"))], "absolute path"),
        "dotdot": ([tar_members(Member("a/../../evil", b"x"))], "'..'"),
        "device": ([tar_members(Member("dev/sda", kind=tarfile.CHRTYPE))], "device node"),
        "block": ([tar_members(Member("dev/sdb", kind=tarfile.BLKTYPE))], "device node"),
        "symlink-escape": (
            [tar_members(Member("lib/esc", kind=tarfile.SYMTYPE, linkname="../../etc/passwd"))],
            "symlink escapes the image",
        ),
        "through-symlink": (
            [
                tar_members(Member("out", kind=tarfile.SYMTYPE, linkname=str(outside))),
                tar_members(Member("out/pwned", b"x")),
            ],
            "goes through a symlink",
        ),
        "hardlink-dotdot": (
            [tar_members(Member("h", kind=tarfile.LNKTYPE, linkname="../../etc/passwd"))],
            "'..'",
        ),
        "hardlink-absolute": (
            [tar_members(Member("h", kind=tarfile.LNKTYPE, linkname="/etc/passwd"))],
            "absolute hard link target",
        ),
        "hardlink-missing": (
            [tar_members(Member("h", kind=tarfile.LNKTYPE, linkname="nothing"))],
            "hard link to a missing file",
        ),
        "uid": ([tar_members(Member("f", b"x", uid=70000))], "uid out of range"),
        "bomb": ([zeros_layer(4 * MAX_BYTES)], "image too large"),
        "layers": ([tar_members(Member(f"f{i}", b"x")) for i in range(MAX_LAYERS + 1)], "layers"),
        "not-tar": ([b"this is not a tar archive at all" * 40], "tar"),
    }


def test_hostile_archives_fail_cleanly(client: httpx.Client, imports: Path, outside: Path) -> None:
    cases = hostile_cases(outside)
    failed = {}
    for name, (layers, reason) in cases.items():
        layout = oci_layout(imports / f"hostile-{name}", layers, image_config())
        image = import_fails(client, f"hostile-{name}", layout)
        failed[name] = image
        assert reason in (image["error"] or ""), (name, image["error"])
        assert image["active"] is False
        assert leftovers(image) == [], name
        assert not (org_dir(image) / image["name"] / image["tag"]).exists(), name
    assert list(outside.iterdir()) == []
    # a failed image is no sandbox's image, and the same name may be imported again
    response = client.post("/sandboxes", json={"name": "x", "image": "hostile-absolute"})
    assert response.status_code == 400
    assert "failed to build" in response.json()["details"]


def test_tampered_and_escaping_sources_fail(client: httpx.Client, imports: Path) -> None:
    layout = oci_layout(imports / "tampered", [tar_members(Member("f", b"good"))], image_config())
    # the layer blob (the only gzip one) rewritten: its digest no longer matches
    for path in (layout / "blobs/sha256").iterdir():
        if path.read_bytes()[:2] == b"\x1f\x8b":
            path.write_bytes(gzip.compress(tarfile_bytes("f", b"evil")))
    assert "digest mismatch" in import_fails(client, "tampered", layout)["error"]
    # a docker-save tree whose manifest points outside it
    saved = imports / "escaping-save"
    saved.mkdir()
    (saved / "config.json").write_text(json.dumps(image_config()))
    entry = {"Config": "config.json", "RepoTags": ["x:1"], "Layers": ["../../../etc/hostname"]}
    (saved / "manifest.json").write_text(json.dumps([entry]))
    assert "leaves the image" in import_fails(client, "escaping-save", saved)["error"]


def tarfile_bytes(name: str, data: bytes) -> bytes:
    return tar_members(Member(name, data))


def test_server_killed_mid_build_leaves_an_error_row_and_no_files() -> None:
    with sandbox_server() as proc:
        imports = proc.data_dir / "imports"
        many = [Member(f"d{i // 1000}/f{i}", b"") for i in range(60_000)]
        layout = oci_layout(imports / "slow", [tar_members(*many)], image_config())
        with proc.client() as client:
            response = client.post("/images", json={"name": "killed", "path": str(layout)})
            assert response.status_code == 202, response.text
            image = response.json()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until it is writing files
                now = client.get(f"/images/{image['id']}").json()
                if any("layer 1/1" in line for line in now["log"]):
                    break
                time.sleep(0.01)
            assert now["status"] == "building", now
        proc.stop(signal.SIGKILL)
        partial = list((org_dir(image) / "killed").glob(".*.partial-*"))
        assert partial, "the kill should have left a partial build behind"
        proc.start()
        with proc.client() as client:
            after = client.get(f"/images/{image['id']}").json()
            assert after["status"] == "error" and "restarted" in after["error"], after
            assert leftovers(after) == []
            assert not partial[0].exists()
            # and the name can be imported again
            again = client.post("/images", json={"name": "killed", "path": str(layout)})
            assert again.status_code == 202
            assert wait_built(client, again.json()["id"])["status"] == "ready"
            assert client.delete(f"/images/{again.json()['id']}").status_code == 200
