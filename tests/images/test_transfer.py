"""An image copied between nodes (``images/transfer.py`` → ``importer.receive_image``): the
tree arrives whole, owners shifted again, and a hostile or broken stream is refused like a
hostile import, leaving nothing behind."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from tests.support.oci_images import busybox_rootfs

from voidrun_server.images.entries import UnpackError
from voidrun_server.images.importer import ImportRequest, import_image, receive_image, target_dir
from voidrun_server.images.sources import ImageConfig
from voidrun_server.images.transfer import ChunkReader, export_tar
from voidrun_server.images.unpack import Limits

pytestmark = pytest.mark.root
BASE = 100000


def request(root: Path, name: str, source: Path = Path()) -> ImportRequest:
    return ImportRequest(
        images_root=root,
        org_id="org1",
        name=name,
        tag="1",
        path=source,
        source_tag="",
        limits=Limits(64 * 2**20, 8),
        uid_base=BASE,
    )


def tree(rootfs: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, uid, gid, content or link target) of every entry under ``rootfs``."""
    out = {}
    for path in sorted(rootfs.rglob("*")):
        st = path.lstat()
        what = (
            os.readlink(path)
            if path.is_symlink()
            else path.read_bytes().hex()[:64]
            if path.is_file()
            else ""
        )
        out[str(path.relative_to(rootfs))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return out


@pytest.fixture
def holder(tmp_path: Path) -> Path:
    """An image imported on the "holding node" (its own images directory)."""
    source = busybox_rootfs(tmp_path / "source")
    (source / "home/app/notes.txt").write_bytes(os.urandom(300_000))
    os.chown(source / "home/app/notes.txt", 1000, 1000)
    os.link(source / "home/app/notes.txt", source / "home/app/same.txt")
    imported = import_image(request(tmp_path / "a", "bb", source))
    return imported.built.rootfs


def test_a_copy_arrives_whole_with_owners_shifted_again(tmp_path: Path, holder: Path) -> None:
    chunks = export_tar(holder, BASE)
    config = ImageConfig(env=["A=1"], cmd=["sh"])
    copied = receive_image(request(tmp_path / "b", "bb"), ChunkReader(chunks), config)
    assert copied.built.rootfs == target_dir(request(tmp_path / "b", "bb")) / "rootfs"
    assert tree(copied.built.rootfs) == tree(holder)
    assert (copied.built.rootfs / "home/app").stat().st_uid == BASE + 1000
    same = copied.built.rootfs / "home/app/same.txt"
    assert same.stat().st_ino == (copied.built.rootfs / "home/app/notes.txt").stat().st_ino
    manifest = (copied.built.rootfs.parent / "manifest.json").read_text()
    assert '"source": "copy"' in manifest and '"A=1"' in manifest


def stream_of(*members: tuple[tarfile.TarInfo, bytes]) -> ChunkReader:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    raw = buf.getvalue()
    return ChunkReader(raw[i : i + 1000] for i in range(0, len(raw), 1000))


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../escape", "'..'"),
        ("/etc/passwd", "absolute"),
        ("dev-node", "device node"),
        ("big-uid", "uid out of range"),
    ],
)
def test_a_hostile_stream_is_refused_and_leaves_nothing(
    tmp_path: Path, member: str, why: str
) -> None:
    info = tarfile.TarInfo(member)
    if member == "dev-node":
        info.type = tarfile.CHRTYPE
    if member == "big-uid":
        info.uid = 70000
    info.size = 0
    req = request(tmp_path, "evil")
    with pytest.raises(UnpackError, match=why):
        receive_image(req, stream_of((info, b"")), ImageConfig())
    assert not target_dir(req).exists()
    assert not any(p.name.startswith(".1.partial") for p in target_dir(req).parent.glob(".*"))


def test_a_stream_cut_short_is_refused(tmp_path: Path, holder: Path) -> None:
    chunks = list(export_tar(holder, BASE))
    data = b"".join(chunks)
    req = request(tmp_path / "b", "bb")
    with pytest.raises(UnpackError):  # inside a member
        receive_image(req, ChunkReader([data[: len(data) // 2]]), ImageConfig())
    assert not target_dir(req).exists()
    # between two members: tarfile alone takes that for the end of the archive
    with pytest.raises(UnpackError, match="ended before the archive did"):
        receive_image(req, ChunkReader(chunks[:-1]), ImageConfig())
    assert not target_dir(req).exists()


def test_device_nodes_are_left_out(tmp_path: Path, holder: Path) -> None:
    """A built image may hold /dev nodes (a sandbox gets its own /dev; imports refuse them)."""
    os.mknod(holder / "dev-null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    copied = receive_image(
        request(tmp_path / "b", "bb"), ChunkReader(export_tar(holder, BASE)), ImageConfig()
    )
    assert not (copied.built.rootfs / "dev-null").exists()
    assert (copied.built.rootfs / "bin/busybox").is_file()


def test_a_tree_not_owned_by_its_range_is_not_sent(tmp_path: Path) -> None:
    rootfs = tmp_path / "r"
    rootfs.mkdir()
    (rootfs / "f").write_text("x")  # owned by root, not by BASE + n
    with pytest.raises(UnpackError, match="uid range"):
        b"".join(export_tar(rootfs, BASE))
