"""Image import: time and disk for an image, cold and when it shares its base layer with an
image already imported, with the content store (hard links of identical files) and without.

Runs the importer in this process (as root, on a scratch images dir under /var/tmp), so the
figures are the unpack itself: no HTTP, no database. Floor: copying the same bytes with
``cp -a`` of the first image's tree, in the same run.

    .venv/bin/python bench/images.py [--base-mb 300] [--files 3000]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from voidrun_server.images.importer import ImportRequest, import_image
from voidrun_server.images.unpack import Limits


def layer(prefix: str, total_mb: int, files: int, seed: int) -> bytes:
    """A tar layer of ``files`` files of random-ish (incompressible) bytes."""
    size = total_mb * 2**20 // files
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(files):
            data = (seed.to_bytes(4, "little") + i.to_bytes(4, "little")) * (size // 8)
            info = tarfile.TarInfo(f"{prefix}/d{i // 100}/f{i}")
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_layout(path: Path, layers: list[bytes]) -> Path:
    from tests.support.oci_images import image_config, oci_layout

    return oci_layout(path, layers, image_config(), compress=False)


def du(path: Path) -> int:
    """Bytes allocated (hard-linked files counted once, like the filesystem does)."""
    real = subprocess.run(["du", "-sk", str(path)], capture_output=True, text=True)
    return int(real.stdout.split()[0]) * 1024


def run(images: Path, org: str, name: str, layout: Path, dedupe: bool) -> float:
    req = ImportRequest(images, org, name, "1", layout, "", Limits(2**40, 128), 100000, dedupe)
    start = time.perf_counter()
    import_image(req)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-mb", type=int, default=300)
    parser.add_argument("--files", type=int, default=3000)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="voidrun-bench-images-", dir="/var/tmp"))
    try:
        base = layer("base", args.base_mb, args.files, 1)
        app1, app2 = layer("app", 10, 100, 2), layer("app", 10, 100, 3)
        one = write_layout(scratch / "src/one", [base, app1])
        two = write_layout(scratch / "src/two", [base, app2])
        print(f"image: {args.base_mb} MiB base layer ({args.files} files) + 10 MiB app layer")
        for dedupe in (False, True):
            images = scratch / f"images-{dedupe}"
            os.sync()
            cold = run(images, "a" * 24, "one", one, dedupe)
            os.sync()
            shared = run(images, "a" * 24, "two", two, dedupe)
            size = du(images)
            label = "content store" if dedupe else "no dedupe    "
            print(
                f"{label}: first import {cold:.2f} s, second (shared base) {shared:.2f} s, "
                f"disk for both {size / 2**20:.0f} MiB"
            )
        tree = scratch / "images-True/orgs" / ("a" * 24) / "one/1/rootfs"
        os.sync()
        start = time.perf_counter()
        subprocess.run(["cp", "-a", str(tree), str(scratch / "copy")], check=True)
        os.sync()
        print(f"floor: cp -a of the first image's tree + sync {time.perf_counter() - start:.2f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
