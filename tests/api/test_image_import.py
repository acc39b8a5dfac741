"""Images a user brings (docs/images.md): import from a rootfs dir, an OCI layout and tarballs,
then real sandboxes from them. The images are made here, without network
(``tests/support/oci_images.py``)."""

from __future__ import annotations

import gzip
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.http import assert_error
from tests.support.images import IMAGES_DIR
from tests.support.oci_images import (
    Member,
    busybox_rootfs,
    docker_save,
    image_config,
    oci_layout,
    tar_dir,
    tar_members,
    tar_tree,
)
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]

MAX_BYTES = 64 * 2**20


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {"VOIDRUN_IMAGE_MAX_BYTES": str(MAX_BYTES), "VOIDRUN_IMAGE_MAX_LAYERS": "8"}
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
def busybox(imports: Path) -> Path:
    return busybox_rootfs(imports / "busybox-root")


def wait_built(client: httpx.Client, image_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        image: dict[str, Any] = client.get(f"/images/{image_id}").json()
        if image["status"] != "building":
            return image
        time.sleep(0.05)
    raise AssertionError(f"image {image_id} still building")


def import_ok(client: httpx.Client, name: str, path: Path | str) -> dict[str, Any]:
    response = client.post("/images", json={"name": name, "version": "1", "path": str(path)})
    assert response.status_code == 202, response.text
    assert response.json()["status"] in ("building", "ready")
    image = wait_built(client, response.json()["id"])
    assert image["status"] == "ready", image
    return image


def import_fails(client: httpx.Client, name: str, path: Path | str) -> dict[str, Any]:
    response = client.post("/images", json={"name": name, "path": str(path)})
    assert response.status_code == 202, response.text
    image = wait_built(client, response.json()["id"])
    assert image["status"] == "error", image
    return image


def sh(client: httpx.Client, box: dict[str, Any], command: str) -> dict[str, Any]:
    response = client.post(f"/sandboxes/{box['id']}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def org_dir(image: dict[str, Any]) -> Path:
    return IMAGES_DIR / "orgs" / image["orgId"]


def leftovers(image: dict[str, Any]) -> list[Path]:
    """Partial build directories (and a manifest-less image dir) of ``image``."""
    name_dir = org_dir(image) / image["name"]
    found = list(name_dir.glob(".*.partial-*")) if name_dir.exists() else []
    target = name_dir / image["tag"]
    if target.exists() and not (target / "manifest.json").exists():
        found.append(target)
    return found


# --- the end-to-end path -------------------------------------------------------------------


def test_busybox_dir_imports_and_runs_a_sandbox(client: httpx.Client, busybox: Path) -> None:
    image = import_ok(client, "busybox-dir", busybox)
    assert image["system"] is False and image["active"] is True
    assert image["source"] == str(busybox)
    box = create_sandbox(client, image="busybox-dir:1")
    assert box["image"] == "busybox-dir:1"
    out = sh(client, box, "echo hello; id -u; test -e /usr/bin/python3 || echo no-python")
    assert out["stdout"].split() == ["hello", "0", "no-python"], out
    # owners as in the source, seen from inside: /home/app belongs to uid 1000
    assert sh(client, box, "stat -c %u /home/app")["stdout"].strip() == "1000"


def test_oci_layout_layers_whiteouts_and_config(
    client: httpx.Client, busybox: Path, imports: Path
) -> None:
    base = tar_dir(busybox)
    adds = tar_members(
        Member("etc/gone", b"x"),
        Member("etc/kept", b"kept\n"),
        Member("opt/d", kind=tarfile.DIRTYPE),
        Member("opt/d/old", b"old"),
        Member("srv/app", kind=tarfile.DIRTYPE),
        Member("usr/bin/suid", b"#!/bin/sh\n", mode=0o4755),
    )
    removes = tar_members(
        Member("etc/.wh.gone"), Member("opt/d/.wh..wh..opq"), Member("opt/d/new", b"new")
    )
    config = image_config(env=["PATH=/bin", "GREETING=from-image"], workdir="/srv/app")
    layout = oci_layout(imports / "layout", [base, adds, removes], config, tag="v1")
    image = import_ok(client, "layered", f"{layout}:v1")
    assert image["config"]["workingDir"] == "/srv/app"
    assert "GREETING=from-image" in image["config"]["env"]
    box = create_sandbox(client, image="layered", envVars={"MINE": "1"})
    out = sh(
        client, box, 'echo "$GREETING $MINE"; pwd; ls /etc; ls /opt/d; stat -c %a /usr/bin/suid'
    )
    lines = out["stdout"].splitlines()
    assert lines[0] == "from-image 1"
    assert lines[1] == "/srv/app"  # the image's WorkingDir is the default cwd
    listing = " ".join(lines[2:-1]).split()
    assert "kept" in listing and "gone" not in listing, listing  # .wh.gone removed it
    assert "new" in listing and "old" not in listing, listing  # the opaque dir hid old
    assert lines[-1] == "755"  # setuid bit stripped (VOIDRUN_IMAGE_SETUID=strip)
    # a request's env wins over the image's; an explicit cwd over its WorkingDir
    response = client.post(
        f"/sandboxes/{box['id']}/exec",
        json={"command": "echo $GREETING; pwd", "env": {"GREETING": "mine"}, "cwd": "/etc"},
    )
    assert response.json()["data"]["stdout"].split() == ["mine", "/etc"]


def test_docker_save_and_oci_tarballs(client: httpx.Client, busybox: Path, imports: Path) -> None:
    base = tar_dir(busybox)
    saved = docker_save(imports / "saved.tar", [base], image_config(env=["A=docker"]), "busy:1")
    gz = imports / "saved.tar.gz"
    gz.write_bytes(gzip.compress(saved.read_bytes()))
    layout = oci_layout(imports / "for-tar", [base], image_config(env=["A=oci"]))
    oci_tar = tar_tree(layout, imports / "oci.tar")
    inodes = set()
    for name, path, value in (
        ("docker-tar", saved, "docker"),
        ("docker-tgz", gz, "docker"),
        ("oci-tar", oci_tar, "oci"),
    ):
        image = import_ok(client, name, path)
        box = create_sandbox(client, image=name)
        assert sh(client, box, "echo $A")["stdout"].strip() == value, name
        inodes.add((org_dir(image) / name / "1/rootfs/bin/busybox").stat().st_ino)
    assert len(inodes) == 1  # one busybox on disk, shared by the three images


def test_start_cmd_runs_the_image_command(
    client: httpx.Client, busybox: Path, imports: Path
) -> None:
    config = image_config(cmd=["sh", "-c", "echo started > /tmp/started; sleep 600"])
    layout = oci_layout(imports / "with-cmd", [tar_dir(busybox)], config)
    import_ok(client, "with-cmd", layout)
    box = create_sandbox(client, image="with-cmd", startCmd=True)
    procs = client.get(f"/sandboxes/{box['id']}/commands/list").json()
    assert any("sleep 600" in str(p) for p in procs["processes"]), procs
    plain = create_sandbox(client, image="with-cmd")
    assert sh(client, plain, "cat /tmp/started || echo none")["stdout"].strip() == "none"


# --- requests refused ------------------------------------------------------------------------


def test_paths_outside_the_import_dirs_are_refused(
    client: httpx.Client, server: ServerProcess, imports: Path
) -> None:
    for path in ("/etc", str(server.data_dir), str(imports / ".." / "voidrun.db")):
        response = client.post("/images", json={"name": "nope", "path": path})
        assert_error(response, 403)
    escape = imports / "escape"
    escape.symlink_to("/etc")
    assert_error(client.post("/images", json={"name": "nope", "path": str(escape)}), 403)
    assert_error(client.post("/images", json={"name": "nope", "path": "relative"}), 400)
    assert_error(client.post("/images", json={"name": "Bad Name", "path": str(imports)}), 400)
    assert_error(client.post("/images", json={"name": "code", "path": str(imports)}), 409)
    missing = client.post("/images", json={"name": "nope", "path": str(imports / "missing")})
    assert_error(missing, 400)
    registry = client.post("/images", json={"name": "reg", "source": "localhost:1/x:1"})
    assert registry.status_code in (202, 400), registry.text  # 400 until registry pulls exist


def test_another_org_cannot_see_use_or_delete(
    client: httpx.Client, server: ServerProcess, busybox: Path
) -> None:
    image = import_ok(client, "private", busybox)
    other = server.client(server.new_tenant("images-other"))
    with other:
        assert_error(other.get(f"/images/{image['id']}"), 404)
        assert_error(other.get("/images/name/private"), 404)
        assert all(i["id"] != image["id"] for i in other.get("/images").json())
        assert_error(other.delete(f"/images/{image['id']}"), 404)
        assert_error(other.post("/sandboxes", json={"name": "x", "image": "private"}), 400)
        system = next(i for i in other.get("/images").json() if i["system"])
        assert_error(other.delete(f"/images/{system['id']}"), 403)
    assert client.get(f"/images/{image['id']}").status_code == 200


def test_delete_refuses_while_used_then_frees_the_disk(client: httpx.Client, busybox: Path) -> None:
    image = import_ok(client, "deleteme", busybox)
    image_dir = org_dir(image) / "deleteme" / "1"
    assert (image_dir / "manifest.json").exists()
    box = create_sandbox(client, image="deleteme")
    assert_error(client.delete(f"/images/{image['id']}"), 409)
    assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
    assert client.delete(f"/images/{image['id']}").status_code == 200
    assert not image_dir.exists()
    assert_error(client.get(f"/images/{image['id']}"), 404)


def test_same_name_and_version_while_building_is_one_build(
    client: httpx.Client, imports: Path, busybox: Path
) -> None:
    big = tar_members(Member("big", b"\0" * (40 * 2**20)))  # slow enough to overlap
    layout = oci_layout(imports / "slow", [tar_dir(busybox), big], image_config())
    body = {"name": "twice", "version": "1", "path": str(layout)}
    answers: list[httpx.Response] = []

    def post() -> None:
        answers.append(client.post("/images", json=body))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = {r.json().get("id") for r in answers if r.status_code == 202}
    assert len(ids) == 1, [r.text for r in answers]
    assert all(r.status_code in (202, 409) for r in answers)
    assert wait_built(client, ids.pop())["status"] == "ready"
    assert_error(client.post("/images", json=body), 409)  # ready: not rebuilt


def test_logs_stream_until_the_build_ends(client: httpx.Client, busybox: Path) -> None:
    image = import_ok(client, "logged", busybox)
    with client.stream("GET", f"/images/{image['id']}/logs") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert "event: log" in text and "unpack" in text
    assert text.rstrip().endswith('data: {"status":"ready","error":null}')
    assert any("entries" in line for line in client.get(f"/images/{image['id']}").json()["log"])


def test_cli_import_for_an_org(client: httpx.Client, server: ServerProcess, busybox: Path) -> None:
    result = server.cli("images", "import", str(busybox), "--name", "cli-busy", "--org", "default")
    assert result.returncode == 0, result.stderr
    assert "cli-busy:latest" in result.stdout and "ready" in result.stdout
    image = client.get("/images/name/cli-busy").json()
    assert image["status"] == "ready" and image["system"] is False
    box = create_sandbox(client, image="cli-busy")
    assert sh(client, box, "echo from-cli")["stdout"] == "from-cli\n"
    again = server.cli("images", "import", str(busybox), "--name", "cli-busy", "--org", "default")
    assert again.returncode == 1 and "already exists" in again.stderr
