"""An image copied between nodes: the sender's tar stream (``images/transfer.py``) into the
receiver's import path (``importer.receive_image``: limits, checks, owner shift, content
store), beside GNU ``tar c | tar x`` of the same tree measured in the same run (the floor).

Both run on this machine through a pipe (no HTTP: on a fleet the stream crosses the network
between the nodes, which adds the link's time). Root; the source is a built image
(``code`` by default, from ``--images-dir``); the copies go to scratch dirs under /var/tmp.

    .venv/bin/python bench/image_copy.py [--images-dir DIR] [--name code --tag 1.0.0] [-n 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from voidrun_server.images.importer import ImportRequest, receive_image
from voidrun_server.images.manifest import find_built_image
from voidrun_server.images.sources import ImageConfig
from voidrun_server.images.transfer import ChunkReader, export_tar
from voidrun_server.images.unpack import Limits

CHUNK = 1024 * 1024


def pipe_chunks(rootfs: Path, uid_base: int) -> Iterator[bytes]:
    """The sender in a thread writing into a pipe; the chunks as the receiver reads them."""
    read_fd, write_fd = os.pipe()

    failed: list[BaseException] = []

    def send() -> None:
        with os.fdopen(write_fd, "wb") as out:
            try:
                for chunk in export_tar(rootfs, uid_base):
                    out.write(chunk)
            except BaseException as exc:  # the receiver sees the stream end early; say why
                failed.append(exc)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    with os.fdopen(read_fd, "rb") as stream:
        while chunk := stream.read(CHUNK):
            yield chunk
    sender.join()
    if failed:
        raise failed[0]


def copy_once(rootfs: Path, scratch: Path) -> tuple[float, int]:
    req = ImportRequest(
        images_root=scratch,
        org_id="bench",
        name="copy",
        tag="1",
        path=Path(),
        source_tag="",
        limits=Limits(64 * 2**30, 1),
        uid_base=100000,
    )
    start = time.perf_counter()
    reader = ChunkReader(pipe_chunks(rootfs, 100000))
    receive_image(req, reader, ImageConfig())
    return time.perf_counter() - start, reader.received


def tar_once(rootfs: Path, scratch: Path) -> float:
    dest = scratch / "tar"
    dest.mkdir()
    start = time.perf_counter()
    subprocess.run(
        f"tar -C {rootfs} -cf - . | tar -C {dest} --numeric-owner -xpf -", shell=True, check=True
    )
    os.sync()  # receive_image syncs before it publishes the image
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images-dir", default="/var/tmp/voidrun-test-images")
    parser.add_argument("--name", default="code")
    parser.add_argument("--tag", default="1.0.0")
    parser.add_argument("-n", type=int, default=2)
    args = parser.parse_args()
    built = find_built_image(Path(args.images_dir), args.name, args.tag)
    if built is None:
        raise SystemExit(f"no built image {args.name}:{args.tag} in {args.images_dir}")
    copies, tars, size = [], [], 0
    for _ in range(args.n):
        for kind in ("copy", "tar"):
            scratch = Path(tempfile.mkdtemp(prefix="voidrun-bench-copy-", dir="/var/tmp"))
            try:
                subprocess.run(["sync"], check=True)
                if kind == "copy":
                    seconds, size = copy_once(built.rootfs, scratch)
                    copies.append(seconds)
                else:
                    tars.append(tar_once(built.rootfs, scratch))
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    mib = size / 2**20
    print(f"image {args.name}:{args.tag}: {mib:.0f} MiB as a tar stream, {args.n} runs each")
    print(f"{'':34}{'best s':>9}{'MiB/s':>9}")
    for label, runs in (("node copy (transfer+receive)", copies), ("floor: tar c | tar x", tars)):
        best = min(runs)
        print(f"{label:34}{best:9.2f}{mib / best:9.0f}")
    print(f"ratio: {min(copies) / min(tars):.2f}x the floor")


if __name__ == "__main__":
    main()
