"""Images made by tests without network: a busybox rootfs, tar layers, OCI layouts and
``docker save`` tarballs, written with plain Python (the formats are JSON and tar)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), "")
APPLETS = "sh ls cat echo pwd env id sleep mkdir rm touch test stat".split()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def busybox_rootfs(root: Path) -> Path:
    """A minimal root filesystem: static busybox, applet links, /etc/passwd, a user ``app``."""
    assert BUSYBOX, "busybox-static is not installed (scripts/install-system-deps.sh)"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    (root / "root").mkdir(mode=0o700)
    (root / "home/app").mkdir(parents=True)
    os.chown(root / "home/app", 1000, 1000)
    return root


def tar_dir(root: Path) -> bytes:
    """A layer holding everything under ``root`` (owners and modes as on disk)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


@dataclass
class Member:
    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    mode: int = 0o644
    linkname: str = ""
    uid: int = 0
    size: int | None = None
    """Header size when it must differ from ``data`` (a truncated member)."""


def tar_members(*members: Member) -> bytes:
    """A layer built member by member, with whatever names and types a test needs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.kind
            info.mode = m.mode
            info.uid = info.gid = m.uid
            info.linkname = m.linkname
            info.mtime = 1_700_000_000
            if m.kind == tarfile.DIRTYPE and m.mode == 0o644:
                info.mode = 0o755
            info.size = len(m.data) if m.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    return buf.getvalue()


def image_config(
    env: list[str] | None = None,
    workdir: str = "",
    cmd: list[str] | None = None,
    user: str = "",
    entrypoint: list[str] | None = None,
) -> dict[str, Any]:
    conf: dict[str, Any] = {"Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin"]}
    if workdir:
        conf["WorkingDir"] = workdir
    if cmd:
        conf["Cmd"] = cmd
    if user:
        conf["User"] = user
    if entrypoint:
        conf["Entrypoint"] = entrypoint
    return {"architecture": "amd64", "os": "linux", "config": conf, "rootfs": {"type": "layers"}}


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs/sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def oci_layout(
    layout: Path,
    layers: list[bytes],
    config: dict[str, Any],
    *,
    tag: str = "latest",
    compress: bool = True,
    extra_tags: dict[str, list[bytes]] | None = None,
) -> Path:
    """Write (or add ``tag`` to) an OCI image layout at ``layout``."""
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index_path = layout / "index.json"
    index = (
        json.loads(index_path.read_text())
        if index_path.exists()
        else {
            "schemaVersion": 2,
            "manifests": [],
        }
    )
    descriptors = []
    for layer in layers:
        gzipped = layer[:2] == b"\x1f\x8b"  # already compressed (a bomb, for instance)
        data = gzip.compress(layer, mtime=0) if compress and not gzipped else layer
        media = OCI_LAYER_GZ if compress or gzipped else OCI_LAYER
        descriptors.append({"mediaType": media, **_blob(layout, data)})
    conf = {"mediaType": OCI_CONFIG, **_blob(layout, json.dumps(config).encode())}
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": conf,
        "layers": descriptors,
    }
    desc = {"mediaType": OCI_MANIFEST, **_blob(layout, json.dumps(manifest).encode())}
    desc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index["manifests"].append(desc)
    index_path.write_text(json.dumps(index))
    return layout


def tar_tree(source: Path, tarball: Path, *, compress: bool = False) -> Path:
    """``source``'s contents as a tarball (an OCI layout turned into an OCI archive)."""
    with tarfile.open(tarball, "w:gz" if compress else "w") as tar:
        for path in sorted(source.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(source)), recursive=False)
    return tarball


def docker_save(tarball: Path, layers: list[bytes], config: dict[str, Any], repo_tag: str) -> Path:
    """A ``docker save`` archive in the legacy format: ``<id>/layer.tar`` + manifest.json."""
    buf: dict[str, bytes] = {}
    names = []
    for layer in layers:
        layer_id = hashlib.sha256(layer).hexdigest()
        buf[f"{layer_id}/layer.tar"] = layer
        buf[f"{layer_id}/VERSION"] = b"1.0"
        names.append(f"{layer_id}/layer.tar")
    config_data = json.dumps(config).encode()
    config_name = f"{hashlib.sha256(config_data).hexdigest()}.json"
    buf[config_name] = config_data
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": names}]
    buf["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(tarball, "w") as tar:
        for name, data in buf.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tarball
