"""OCI image layouts written by Python, for image import and registry tests (no network).

Each builder writes a complete layout (``oci-layout``, ``index.json``, ``blobs/sha256``) with
gzip layers made from in-memory file trees, deterministic (fixed mtimes, sorted entries), so the
same builder twice gives the same digests. A tree maps a path inside the image to a :class:`F`
(file), :class:`D` (directory), :class:`L` (symlink) or :class:`W` (whiteout) entry.

- :func:`busybox_layout`: a busybox-static rootfs (``/bin/busybox`` and its applet links), no
  Python, with ``Env`` and ``WorkingDir`` set in its config.
- :func:`debian_old_python_layout`: a glibc rootfs with the host's ``bash`` and its libraries,
  ``/etc/debian_version`` and a fake ``/usr/bin/python3`` that claims to be Python 3.4 (the agent
  must never use it).
- :func:`whiteout_layout`: three layers over busybox, the last deleting a file (``.wh.``) and
  emptying a directory (``.wh..wh..opq``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

MTIME = 1_700_000_000
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BUSYBOX = Path("/bin/busybox")
OLD_PYTHON_VERSION = "Python 3.4.10"


@dataclass(frozen=True)
class F:
    data: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class D:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0


@dataclass(frozen=True)
class L:
    target: str


@dataclass(frozen=True)
class W:
    """A whiteout: deletes the path in lower layers (``opaque``: the path is a directory that
    keeps nothing from lower layers)."""

    opaque: bool = False


Tree = dict[str, F | D | L | W]


@dataclass
class Layout:
    """What a builder wrote: the layout dir, its tag, and digests a test can compare."""

    path: Path
    tag: str
    manifest_digest: str
    config_digest: str
    layer_digests: list[str]
    diff_ids: list[str]
    config: dict[str, object] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """``layout-dir:tag``, as skopeo (``oci:`` + this) and the import API take it."""
        return f"{self.path}:{self.tag}"


def layer_tar(tree: Tree) -> bytes:
    """An uncompressed tar of ``tree`` (parents first, fixed mtimes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(tree):
            entry = tree[path]
            name = path.strip("/")
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            payload: bytes | None = None
            if isinstance(entry, W) and entry.opaque:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)  # the directory itself, then its opaque marker
                info = tarfile.TarInfo(f"{name}/.wh..wh..opq")
                info.mtime = MTIME
            elif isinstance(entry, W):
                parent, _, base = name.rpartition("/")
                info.name = f"{parent}/.wh.{base}".lstrip("/")
            elif isinstance(entry, D):
                info.type, info.mode, info.uid, info.gid = (
                    tarfile.DIRTYPE,
                    entry.mode,
                    entry.uid,
                    entry.gid,
                )
            elif isinstance(entry, L):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
            else:
                payload = entry.data.encode() if isinstance(entry.data, str) else entry.data
                info.size, info.mode, info.uid, info.gid = (
                    len(payload),
                    entry.mode,
                    entry.uid,
                    entry.gid,
                )
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def _blob(blobs: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return f"sha256:{digest}"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def write_layout(
    dest: Path,
    layers: list[Tree],
    image_config: dict[str, object] | None = None,
    tag: str = "latest",
) -> Layout:
    """Write an OCI layout at ``dest`` (created) holding one image of ``layers``, bottom first."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layer_descs, diff_ids = [], []
    for tree in layers:
        raw = layer_tar(tree)
        diff_ids.append(f"sha256:{hashlib.sha256(raw).hexdigest()}")
        packed = gzip.compress(raw, mtime=0)
        layer_descs.append(
            {"mediaType": MEDIA_LAYER, "digest": _blob(blobs, packed), "size": len(packed)}
        )
    config = {
        "architecture": _arch(),
        "os": "linux",
        "config": image_config or {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created_by": f"tests/support/oci_layouts.py layer {i}"} for i in range(len(layers))
        ],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = _blob(blobs, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": layer_descs,
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = _blob(blobs, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (dest / "index.json").write_text(json.dumps(index, sort_keys=True))
    return Layout(
        path=dest,
        tag=tag,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layer_digests=[str(d["digest"]) for d in layer_descs],
        diff_ids=diff_ids,
        config=config,
    )


def _base_files() -> Tree:
    return {
        "/etc": D(),
        "/etc/passwd": F(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/nonexistent:/bin/false\n"
        ),
        "/etc/group": F("root:x:0:\nnogroup:x:65534:\n"),
        "/root": D(0o700),
        "/tmp": D(0o1777),
        "/home": D(),
    }


def busybox_tree() -> Tree:
    """``/bin/busybox`` (the host's busybox-static) with a link per applet, plus /etc basics."""
    if not BUSYBOX.exists():
        raise FileNotFoundError("busybox-static is not installed (apt-get install busybox-static)")
    applets = subprocess.run(
        [str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True
    ).stdout.split()
    tree: Tree = {
        **_base_files(),
        "/bin": D(),
        "/sbin": D(),
        "/usr": D(),
        "/usr/bin": D(),
        "/usr/sbin": D(),
    }
    tree["/bin/busybox"] = F(BUSYBOX.read_bytes(), 0o755)
    for applet in applets:
        path = "/" + applet.strip("/")
        if path != "/bin/busybox":
            tree[path] = L("/bin/busybox")
    return tree


BUSYBOX_CONFIG: dict[str, object] = {
    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from the image"],
    "WorkingDir": "/srv/app",
    "Cmd": ["/bin/sh"],
}


def busybox_layout(dest: Path, tag: str = "1") -> Layout:
    """A busybox-only image (no Python, static binary); ``WorkingDir`` /srv/app exists."""
    tree = busybox_tree()
    tree.update({"/srv": D(), "/srv/app": D(), "/srv/app/README": F("busybox image\n")})
    return write_layout(dest, [tree], BUSYBOX_CONFIG, tag)


def _with_libraries(tree: Tree, binary: Path) -> None:
    """Add ``binary`` and the shared libraries ``ldd`` lists for it (host copies)."""
    tree[str(binary)] = F(binary.read_bytes(), 0o755)
    listing = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True)
    for line in listing.stdout.splitlines():
        parts = line.split()
        for word in parts:
            if word.startswith("/") and Path(word).exists():
                library = Path(word)
                real = library.resolve()
                for parent in list(library.parents)[:-1]:
                    tree.setdefault(str(parent), D())
                tree[str(library)] = F(real.read_bytes(), 0o755)


def debian_old_python_layout(dest: Path, tag: str = "bookworm-oldpy") -> Layout:
    """A glibc 'Debian' rootfs: bash (+ libs), busybox tools, a fake old ``python3``."""
    tree = busybox_tree()
    for path in ("/usr/bin/bash", "/bin/bash"):
        tree.pop(path, None)
    bash = Path(shutil.which("bash") or "/usr/bin/bash").resolve()
    _with_libraries(tree, bash)
    tree["/usr/bin/bash"] = tree.pop(str(bash))
    tree.update(
        {
            "/etc/debian_version": F("12.0\n"),
            "/etc/os-release": F('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'),
            "/bin/bash": L("/usr/bin/bash"),
            "/usr/bin/python3": F(f"#!/bin/sh\necho '{OLD_PYTHON_VERSION}'\nexit 0\n", 0o755),
            "/usr/local": D(),
            "/usr/local/bin": D(),
        }
    )
    config: dict[str, object] = {
        "Env": ["PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"],
        "WorkingDir": "/root",
        "Cmd": ["/usr/bin/bash"],
    }
    return write_layout(dest, [tree], config, tag)


WHITEOUT_KEPT = "/data/kept.txt"
WHITEOUT_GONE = "/data/gone.txt"
OPAQUE_DIR = "/data/cache"


def whiteout_layout(dest: Path, tag: str = "whiteout") -> Layout:
    """busybox, then /data with files, then a layer deleting one file and emptying a dir.

    After unpacking: ``/data/kept.txt`` (updated by layer 3), no ``/data/gone.txt``, and
    ``/data/cache`` holding only ``new.txt``.
    """
    second: Tree = {
        "/data": D(),
        WHITEOUT_KEPT: F("layer 2\n"),
        WHITEOUT_GONE: F("layer 2, deleted by layer 3\n"),
        OPAQUE_DIR: D(),
        f"{OPAQUE_DIR}/old.txt": F("layer 2, hidden by the opaque dir\n"),
    }
    third: Tree = {
        "/data": D(),
        WHITEOUT_KEPT: F("layer 3\n"),
        WHITEOUT_GONE: W(),
        OPAQUE_DIR: W(opaque=True),
        f"{OPAQUE_DIR}/new.txt": F("layer 3\n"),
    }
    return write_layout(dest, [busybox_tree(), second, third], BUSYBOX_CONFIG, tag)


def oci_tarball(layout: Layout, dest: Path) -> Path:
    """The layout as an (uncompressed) OCI archive tarball at ``dest``."""
    with tarfile.open(dest, "w") as tar:
        for path in sorted(layout.path.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout.path)), recursive=False)
    return dest
