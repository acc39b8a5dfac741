"""Where an imported image comes from: an OCI layout, a ``docker save`` tree, or a rootfs dir.

:func:`open_source` looks at a host path (already checked against the import directories) and
returns its layers, in order, and the image config. A tarball (plain or compressed, OCI or
``docker save``) is first unpacked into the build's own scratch directory, confined like a
layer, and then read as a directory. Files inside a source are opened relative to its top
directory one component at a time without following symlinks; a symlink met on the way (the
legacy ``docker save`` format links repeated layers) is resolved lexically and may not leave it.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .entries import Entry, UnpackError, dir_entries, tar_entries

MAX_JSON = 4 * 2**20
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_REF_NAME = "org.opencontainers.image.ref.name"
_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class ImageConfig:
    """What the image's config says about how its processes run."""

    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ImageConfig:
        def strings(key: str) -> list[str]:
            return [str(item) for item in data.get(key) or []]

        return cls(
            env=strings("env"),
            working_dir=str(data.get("workingDir") or ""),
            user=str(data.get("user") or ""),
            entrypoint=strings("entrypoint"),
            cmd=strings("cmd"),
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "env": self.env,
            "workingDir": self.working_dir,
            "user": self.user,
            "entrypoint": self.entrypoint,
            "cmd": self.cmd,
        }


@dataclass
class Layer:
    top: Path
    path: str
    """Relative to ``top``."""
    digest: str = ""
    """``sha256:<hex>`` the file must hash to (OCI blobs), or empty."""


@dataclass
class Source:
    kind: str  # "oci", "docker" or "rootfs"
    layers: list[Layer]
    config: ImageConfig
    rootfs: Path | None = None


def split_tag(path: str) -> tuple[str, str]:
    """``/imports/layout:v1`` → (``/imports/layout``, ``v1``) when only the former exists."""
    head, _, tag = path.rpartition(":")
    if head and "/" not in tag and not os.path.lexists(path) and os.path.lexists(head):
        return head, tag
    return path, ""


def open_source(path: Path, tag: str, scratch: Path, budget: int) -> Source:
    """Identify ``path`` and list its layers; a tarball is unpacked into ``scratch`` first."""
    if path.is_file():
        from .unpack import Limits, RootfsWriter

        scratch.mkdir(mode=0o700)
        writer = RootfsWriter(
            scratch, limits=Limits(max_bytes=budget, max_layers=1), uid_base=0, store=None
        )
        try:
            with path.open("rb") as fh, decompressed(fh, _magic(fh)) as stream:
                writer.apply(tar_entries(stream, budget))
        finally:
            writer.close()
        source = _from_dir(scratch, tag)
        if source.kind == "rootfs":
            raise UnpackError(
                "not an image tarball", "it holds neither oci-layout nor manifest.json"
            )
        return source
    if path.is_dir():
        return _from_dir(path, tag)
    raise UnpackError("import path is neither a file nor a directory", str(path))


def _from_dir(top: Path, tag: str) -> Source:
    if (top / "oci-layout").is_file() and (top / "index.json").is_file():
        return _oci(top, tag)
    if (top / "manifest.json").is_file() and not (top / "etc").is_dir():
        return _docker(top, tag)
    if tag:
        raise UnpackError("a tag names an image in an OCI layout", "this is a plain directory")
    return Source("rootfs", [], ImageConfig(), rootfs=top)


def _oci(top: Path, tag: str) -> Source:
    index = _json(top, "index.json")
    manifests = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    if tag:
        manifests = [m for m in manifests if (m.get("annotations") or {}).get(_REF_NAME) == tag]
        if not manifests:
            raise UnpackError("tag not found in the OCI layout", tag)
    if len(manifests) != 1:
        names = [(m.get("annotations") or {}).get(_REF_NAME, "?") for m in manifests]
        raise UnpackError(
            "the OCI layout holds several images; pick one with path:tag", ", ".join(names)
        )
    manifest = _json(top, _blob(manifests[0]))
    while manifest.get("mediaType") in _INDEX_TYPES or "manifests" in manifest:
        manifest = _json(top, _blob(_pick_platform(manifest.get("manifests") or [])))
    config = _json(top, _blob(manifest.get("config") or {}))
    layers = [
        Layer(top, _blob(layer), digest=str(layer.get("digest")))
        for layer in manifest.get("layers") or []
    ]
    return Source("oci", layers, _config(config))


def _docker(top: Path, tag: str) -> Source:
    entries = _json(top, "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise UnpackError("invalid docker save manifest", "manifest.json is not a list")
    if tag:
        entries = [
            e for e in entries if any(str(t).endswith(f":{tag}") for t in e.get("RepoTags") or [])
        ]
        if not entries:
            raise UnpackError("tag not found in the docker save archive", tag)
    if len(entries) != 1:
        raise UnpackError("the archive holds several images; pick one with path:tag")
    entry = entries[0]
    config = _json(top, str(entry.get("Config", "")))
    layers = [Layer(top, str(p)) for p in entry.get("Layers") or []]
    return Source("docker", layers, _config(config))


def _pick_platform(manifests: list[Any]) -> dict[str, Any]:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    for m in manifests:
        platform = m.get("platform") or {}
        if platform.get("os", "linux") == "linux" and platform.get("architecture") == arch:
            return dict(m)
    if len(manifests) == 1:
        return dict(manifests[0])
    raise UnpackError("no image for this platform in the index", f"linux/{arch}")


def _blob(descriptor: dict[str, Any]) -> str:
    digest = str(descriptor.get("digest", ""))
    algorithm, _, hexdigest = digest.partition(":")
    if (
        algorithm != "sha256"
        or len(hexdigest) != 64
        or not all(c in "0123456789abcdef" for c in hexdigest)
    ):
        raise UnpackError("invalid digest in the OCI layout", digest[:100])
    return f"blobs/sha256/{hexdigest}"


def _config(data: Any) -> ImageConfig:
    conf = data.get("config") or {} if isinstance(data, dict) else {}

    def strings(value: Any) -> list[str]:
        return [str(v) for v in value] if isinstance(value, list) else []

    return ImageConfig(
        env=strings(conf.get("Env")),
        working_dir=str(conf.get("WorkingDir") or ""),
        user=str(conf.get("User") or ""),
        entrypoint=strings(conf.get("Entrypoint")),
        cmd=strings(conf.get("Cmd")),
    )


def _json(top: Path, rel: str) -> Any:
    with open_inside(top, rel) as fh:
        data = fh.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise UnpackError("image metadata too large", rel)
    try:
        return json.loads(data)
    except ValueError:
        raise UnpackError("invalid JSON in the image", rel) from None


@contextmanager
def open_inside(top: Path, rel: str) -> Iterator[IO[bytes]]:
    """Open ``top/rel`` for reading, never leaving ``top`` (see the module doc)."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts or rel.startswith("/"):
        raise UnpackError("path leaves the image", rel[:200])
    hops = 0
    base = os.open(top, _FLAGS | os.O_DIRECTORY)
    fd = base
    try:
        i = 0
        while i < len(parts):
            last = i == len(parts) - 1
            try:
                nxt = os.open(parts[i], _FLAGS | (0 if last else os.O_DIRECTORY), dir_fd=fd)
            except OSError as exc:
                link = _readlink(fd, parts[i])
                if link is None or hops >= 40:
                    raise UnpackError(
                        "cannot read from the image", f"{rel}: {exc.strerror}"
                    ) from None
                hops += 1
                target = posixpath.normpath(posixpath.join(*(parts[:i] or ["."]), link))
                if link.startswith("/") or target == ".." or target.startswith("../"):
                    raise UnpackError("link leaves the image", f"{rel} -> {link}") from None
                parts = [p for p in target.split("/") if p not in ("", ".")] + parts[i + 1 :]
                if fd != base:
                    os.close(fd)
                fd, i = base, 0
                continue
            if fd != base:
                os.close(fd)
            fd, i = nxt, i + 1
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would hang the build forever
            raise UnpackError("not a regular file in the image", rel)
        fh = os.fdopen(fd, "rb")
        fd = base
    finally:
        if fd != base:
            os.close(fd)
        os.close(base)
    with fh:
        yield fh


def _readlink(dir_fd: int, name: str) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError:
        return None


def _magic(fh: IO[bytes]) -> bytes:
    magic = fh.read(6)
    fh.seek(0)
    return magic


class HashingReader:
    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data


@contextmanager
def decompressed(raw: IO[bytes], magic: bytes) -> Iterator[IO[bytes]]:
    """The tar stream inside ``raw`` (gzip, bzip2, xz or none, told by its first bytes)."""
    if magic.startswith(b"\x1f\x8b"):
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    elif magic.startswith(b"BZh"):
        stream = bz2.BZ2File(raw)
    elif magic.startswith(b"\xfd7zXZ\x00"):
        stream = lzma.LZMAFile(raw)
    elif magic.startswith(b"\x28\xb5\x2f\xfd"):
        raise UnpackError("zstd-compressed layers are not supported", "use gzip layers")
    else:
        yield raw
        return
    with stream:
        yield stream


def layer_entries(layer: Layer, budget: int) -> Iterator[Entry]:
    """The entries of one layer; an OCI blob's digest is checked once it has been read."""
    with open_inside(layer.top, layer.path) as fh:
        magic = _magic(fh)
        hashing = HashingReader(fh)
        with decompressed(hashing, magic) as stream:  # type: ignore[arg-type]
            yield from tar_entries(stream, budget)
        while hashing.read(1024 * 1024):
            pass
    if layer.digest and f"sha256:{hashing.hash.hexdigest()}" != layer.digest:
        raise UnpackError("layer digest mismatch", f"{layer.path} is not {layer.digest}")


def rootfs_entries(rootfs: Path) -> Iterator[Entry]:
    return dir_entries(os.fspath(rootfs))
