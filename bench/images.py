"""Images: import time and disk, and snapshot / fork times of a sandbox.

Import: time and disk for an image, cold and when it shares its base layer with an image
already imported, with the content store (hard links of identical files) and without. Runs the
importer in this process (as root, on a scratch images dir under /var/tmp), so the figures are
the unpack itself: no HTTP, no database. Floor: ``cp -a`` of the first image's tree.

Snapshot and fork (``--part snapshot``): a real server (``_harness.py``), a sandbox of the
``code`` image that has written ``--written-mb`` MiB (5 files), then through the HTTP API:
``POST /sandboxes/{id}/snapshot`` (with how long the sandbox was frozen, from the manifest)
and ``POST /sandboxes/{id}/fork {"count": 10}`` (a snapshot plus ten running sandboxes).
Floor: copying the same amount of data on the images' filesystem with ``cp`` + ``sync -f``.

Create (``--part create``): a real server, warm pool off; a busybox-only root filesystem (the
host's busybox-static, no Python) imported through ``POST /api/images``, then ``-n`` × 10
creates from it interleaved with creates from ``code``, each deleted at once: p50/p95 of both.

    .venv/bin/python bench/images.py [--part import|snapshot|create|all] [--base-mb 300]
        [--files 3000] [--written-mb 500] [-n 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

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
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' layout writer
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
    parser.add_argument("--part", choices=("import", "snapshot", "create", "all"), default="all")
    parser.add_argument("--base-mb", type=int, default=300)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--written-mb", type=int, default=500)
    parser.add_argument("-n", type=int, default=3, help="snapshots and forks to time")
    args = parser.parse_args()
    if args.part in ("import", "all"):
        imports(args)
    if args.part in ("snapshot", "all"):
        snapshots(args.written_mb, args.n)
    if args.part in ("create", "all"):
        creates(args.n * 10)


def busybox_rootfs(root: Path) -> None:
    """/bin/busybox (Debian's busybox-static) and its applets as symlinks; no Python."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "root").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for applet in ("sh", "ls", "cat", "echo", "true", "sleep", "ps", "id", "env"):
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")


def creates(n: int) -> None:
    from _harness import percentiles, server

    imports_dir = Path(tempfile.mkdtemp(prefix="voidrun-bench-imports-", dir="/var/tmp"))
    os.chmod(imports_dir, 0o755)
    try:
        busybox_rootfs(imports_dir / "busybox")
        env = {"VOIDRUN_IMAGE_IMPORT_DIRS": json.dumps([str(imports_dir)])}
        with server(VOIDRUN_WARM_POOL_SIZE="0", **env) as srv, srv.client() as client:
            body = {"name": "bench-busybox", "version": "1", "path": str(imports_dir / "busybox")}
            image = client.post("/images", json=body).json()
            while image["status"] == "building":
                time.sleep(0.2)
                image = client.get(f"/images/{image['id']}").json()
            assert image["status"] == "ready", image
            times: dict[str, list[float]] = {"code": [], "bench-busybox": []}
            try:
                for i in range(n + 3):
                    for name, values in times.items():
                        started = time.perf_counter()
                        response = client.post("/sandboxes", json={"name": "b", "image": name})
                        elapsed = (time.perf_counter() - started) * 1000
                        response.raise_for_status()
                        client.delete(f"/sandboxes/{response.json()['data']['id']}")
                        if i >= 3:
                            values.append(elapsed)
            finally:
                client.delete(f"/images/{image['id']}")
        print(f"create p50 / p95 (ms), n={n} each, interleaved, warm pool off")
        for name, values in times.items():
            p50, p95, _ = percentiles(values)
            print(f"  {name:<16} {p50:7.2f} {p95:7.2f}")
    finally:
        shutil.rmtree(imports_dir, ignore_errors=True)


def imports(args: argparse.Namespace) -> None:
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


def snapshots(written_mb: int, n: int) -> None:
    from _harness import IMAGES, server

    print(f"snapshot / fork of a code-image sandbox that wrote {written_mb} MiB (5 files)")
    write = (
        f"for i in 1 2 3 4 5; do head -c {written_mb * 2**20 // 5} /dev/urandom "
        "> /root/data-$i; done"
    )
    with server() as srv, srv.client() as client:
        client.timeout = httpx.Timeout(600)
        box = client.post("/sandboxes", json={"name": "bench-source"}).json()["data"]
        out = client.post(f"/sandboxes/{box['id']}/exec", json={"command": write, "timeout": 300})
        out.raise_for_status()
        made: list[dict[str, Any]] = []
        try:
            for i in range(n):
                os.sync()
                started = time.perf_counter()
                response = client.post(
                    f"/sandboxes/{box['id']}/snapshot",
                    json={"name": "bench-snap", "version": str(i)},
                )
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                image = response.json()
                made.append(image)
                manifest = IMAGES / "orgs" / image["orgId"] / "bench-snap" / str(i)
                frozen = json.loads((manifest / "manifest.json").read_text())["frozen_ms"]
                print(f"snapshot {i + 1}: {elapsed:.2f} s (sandbox frozen {frozen:.0f} ms)")
            for i in range(n):
                os.sync()
                started = time.perf_counter()
                response = client.post(f"/sandboxes/{box['id']}/fork", json={"count": 10})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                forked = response.json()
                made.append(forked["image"])
                assert all(f["status"] == "running" for f in forked["data"])
                print(f"fork of 10 {i + 1}: {elapsed:.2f} s (snapshot + 10 running sandboxes)")
                for fork in forked["data"]:
                    client.delete(f"/sandboxes/{fork['id']}").raise_for_status()
        finally:
            for image in made:
                client.delete(f"/images/{image['id']}")
        with tempfile.TemporaryDirectory(dir=IMAGES) as scratch:
            src = Path(scratch) / "src"
            subprocess.run(["head", "-c", str(written_mb * 2**20), "/dev/urandom"],
                           stdout=src.open("wb"), check=True)  # fmt: skip
            os.sync()
            started = time.perf_counter()
            subprocess.run(["cp", str(src), str(Path(scratch) / "dst")], check=True)
            subprocess.run(["sync", "-f", str(scratch)], check=True)
            floor = time.perf_counter() - started
            print(
                f"floor: cp of {written_mb} MiB on the images' filesystem + sync -f {floor:.2f} s"
            )


if __name__ == "__main__":
    main()
