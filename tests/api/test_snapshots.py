"""Snapshots and forks (docs/images.md "Snapshots and forks"): a sandbox's root saved as an
org image, sandboxes made from it, and N forks in one call, against a real server with real
sandboxes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.http import assert_error
from tests.support.images import IMAGES_DIR
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server() as proc:
        try:
            yield proc
        finally:
            _delete_everything(proc)


def _delete_everything(proc: ServerProcess) -> None:
    """Snapshot images live in the shared images dir: free them (sandboxes first, then the
    snapshots layered on others before those)."""
    if proc.process is None:
        return
    with proc.client() as client:
        for box in client.get("/sandboxes", params={"limit": 100}).json()["data"]:
            client.delete(f"/sandboxes/{box['id']}")
        for _ in range(5):
            for image in client.get("/images").json():
                if not image["system"]:
                    client.delete(f"/images/{image['id']}")


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def sh(client: httpx.Client, box: dict[str, Any] | str, command: str) -> str:
    box_id = box if isinstance(box, str) else box["id"]
    response = client.post(f"/sandboxes/{box_id}/exec", json={"command": command})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert data["exitCode"] == 0, (command, data)
    return str(data["stdout"])


def snapshot(client: httpx.Client, box: dict[str, Any], name: str, version: str = "1") -> Any:
    body = {"name": name, "version": version}
    response = client.post(f"/sandboxes/{box['id']}/snapshot", json=body)
    assert response.status_code == 201, response.text
    image = response.json()
    assert image["status"] == "ready" and image["source"] == f"snapshot of {box['id']}", image
    assert (image["name"], image["tag"]) == (name, version)
    return image


def status(client: httpx.Client, box: dict[str, Any]) -> str:
    return str(client.get(f"/sandboxes/{box['id']}").json()["data"]["status"])


WRITE = """
set -e
mkdir -p /root/data/sub
printf 'hello snapshot\\n' > /root/data/a.txt
chmod 640 /root/data/a.txt && chown 1000:1001 /root/data/a.txt
printf x > /root/data/tool && chmod 4755 /root/data/tool
ln -s ../a.txt /root/data/sub/link && ln /root/data/a.txt /root/data/hard
dd if=/dev/zero of=/root/data/sparse bs=1 count=1 seek=100M 2>/dev/null
mkfifo /root/data/fifo
rm /etc/issue
rm -rf /usr/share/doc/curl && mkdir /usr/share/doc/curl && echo only > /usr/share/doc/curl/only
mv /usr/share/doc/git /usr/share/doc/git-moved
"""

CHECK = """
cat /root/data/a.txt
stat -c '%a %u %g %h' /root/data/a.txt /root/data/hard
stat -c '%a' /root/data/tool
readlink /root/data/sub/link; cat /root/data/sub/link
stat -c '%s %b' /root/data/sparse
stat -c '%F' /root/data/fifo
test -e /etc/issue && echo issue-present || echo issue-absent
ls /usr/share/doc/curl
test -e /usr/share/doc/git && echo git-present || echo git-absent
ls /usr/share/doc/git-moved | head -1
cat /etc/hostname
"""


def test_snapshot_then_create_has_the_files_and_the_deletions(client: httpx.Client) -> None:
    source = create_sandbox(client, name="snap-source")
    sh(client, source, WRITE)
    git_first = sh(client, source, "ls /usr/share/doc/git-moved | head -1").strip()
    image = snapshot(client, source, "snap-files")
    code = client.get("/images/name/code").json()
    assert image["parentId"] == code["id"] and image["config"] == code["config"]
    # Later writes of the source never reach the snapshot.
    sh(client, source, "echo changed > /root/data/a.txt; rm /root/data/sub/link; touch /new")
    assert status(client, source) == "running"

    box = create_sandbox(client, name="from-snap", image="snap-files:1")
    assert box["image"] == "snap-files:1"
    lines = sh(client, box, CHECK).splitlines()
    assert lines[0] == "hello snapshot"
    assert lines[1:3] == ["640 1000 1001 2", "640 1000 1001 2"]  # owner, mode, one inode
    assert lines[3] == "755"  # setuid/setgid bits are stripped (the image policy)
    assert lines[4:6] == ["../a.txt", "hello snapshot"]
    size, blocks = map(int, lines[6].split())
    assert size == 100 * 2**20 + 1 and blocks < 100  # still sparse
    assert lines[7] == "fifo"
    assert lines[8] == "issue-absent"  # the source's deletion (a whiteout) holds
    assert lines[9] == "only"  # a directory replaced in the source is opaque
    assert lines[10] == "git-absent" and lines[11] == git_first
    assert lines[12] == "from-snap"  # its own identity, not the source's
    assert sh(client, box, "test -e /new && echo yes || echo no").strip() == "no"
    # The image row and its files: one layer over the code image.
    manifest = json.loads((_image_dir(image) / "manifest.json").read_text())
    assert manifest["snapshot_of"] == source["id"] and manifest["parent"] == "code:1.0.0"
    assert manifest["whiteouts"] >= 2 and len(manifest["layers"]) == 1
    for name in ("hostname", "hosts"):
        assert not (_image_dir(image) / "rootfs" / "etc" / name).exists()


def test_a_snapshot_of_a_snapshot_sandbox_and_stopped_and_paused_sources(
    client: httpx.Client,
) -> None:
    source = create_sandbox(client, name="layer-one")
    sh(client, source, "echo one > /one && echo keep > /keep && echo gone > /gone")
    assert client.post(f"/sandboxes/{source['id']}/stop").status_code == 200
    first = snapshot(client, source, "layer-one")  # a stopped sandbox: its disk, mounted
    assert status(client, source) == "stopped"

    middle = create_sandbox(client, name="layer-two", image="layer-one:1")
    sh(client, middle, "rm /gone && echo two > /two")
    assert client.post(f"/sandboxes/{middle['id']}/pause").status_code == 200
    second = snapshot(client, middle, "layer-two")
    assert status(client, middle) == "paused"  # stays paused
    assert second["parentId"] == first["id"]
    assert len(json.loads((_image_dir(second) / "manifest.json").read_text())["layers"]) == 2

    top = create_sandbox(client, name="layer-three", image="layer-two:1")
    out = sh(client, top, "cat /one /two /keep; test -e /gone && echo gone || echo no-gone")
    assert out.split() == ["one", "two", "keep", "no-gone"]
    # The first snapshot is a layer of the second: it cannot go while the second exists.
    assert client.delete(f"/sandboxes/{source['id']}").status_code == 200
    assert client.delete(f"/sandboxes/{middle['id']}").status_code == 200
    body = assert_error(client.delete(f"/images/{first['id']}"), 409)
    assert "layered" in str(body["details"])
    assert client.delete(f"/sandboxes/{top['id']}").status_code == 200
    assert client.delete(f"/images/{second['id']}").status_code == 200
    assert client.delete(f"/images/{first['id']}").status_code == 200
    assert not _image_dir(first).exists()


WRITER = (
    "mkdir -p /w/a /w/b; dd if=/dev/urandom of=/w/a/000big bs=1M count=48 2>/dev/null; "
    "i=0; while true; do echo $i > /w/a/$i; echo $i > /w/b/$i; i=$((i+1)); done"
)


def test_snapshot_of_a_sandbox_while_it_writes_is_consistent(client: httpx.Client) -> None:
    """The writer creates ``a/N`` before ``b/N``. A copy made while it runs (``a`` listed
    before ``b``, the big file making the gap long) would hold some ``b/N`` without ``a/N``;
    a frozen sandbox gives a point in time, where every ``b/N`` has its ``a/N``."""
    source = create_sandbox(client, name="writer")
    response = client.post(f"/sandboxes/{source['id']}/commands/run", json={"command": WRITER})
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 60
    while int(sh(client, source, "ls /w/b 2>/dev/null | wc -l")) < 200:
        assert time.monotonic() < deadline, "the writer did not start"
    image = snapshot(client, source, "while-writing")
    # The source runs on: its writer keeps going.
    assert status(client, source) == "running"
    before = int(sh(client, source, "ls /w/b | wc -l"))
    deadline = time.monotonic() + 60
    while int(sh(client, source, "ls /w/b | wc -l")) <= before:
        assert time.monotonic() < deadline, "the writer stopped after the snapshot"

    box = create_sandbox(client, name="frozen-copy", image=f"{image['name']}:1")
    a = set(sh(client, box, "ls /w/a").split()) - {"000big"}
    b = set(sh(client, box, "ls /w/b").split())
    assert len(b) >= 200
    assert b <= a, sorted(b - a, key=int)[:10]
    assert len(a - b) <= 1  # at most the one pair being written at the freeze
    assert sh(client, box, "stat -c %s /w/a/000big").strip() == str(48 * 2**20)


def test_fork_five_independent_sandboxes(client: httpx.Client) -> None:
    source = create_sandbox(
        client, name="fork-source", cpu=1, envVars={"ROLE": "forked"}, labels={"team": "x"}
    )
    sh(client, source, "echo source > /root/state")
    response = client.post(f"/sandboxes/{source['id']}/fork", json={"count": 5})
    assert response.status_code == 201, response.text
    body = response.json()
    forks, image = body["data"], body["image"]
    assert len({f["id"] for f in forks}) == 5 and source["id"] not in {f["id"] for f in forks}
    assert [f["name"] for f in forks] == [f"fork-source-fork-{i}" for i in range(1, 6)]
    assert image["status"] == "ready" and image["source"] == f"snapshot of {source['id']}"
    for fork in forks:
        assert fork["status"] == "running" and fork["image"] == f"{image['name']}:{image['tag']}"
        assert fork["envVars"] == {"ROLE": "forked"} and fork["labels"] == {"team": "x"}
        assert sh(client, fork, "cat /root/state; echo $ROLE").split() == ["source", "forked"]
    sh(client, forks[0], "echo mine > /root/state && echo extra > /root/only-here")
    for other in [source, *forks[1:]]:
        out = sh(client, other, "cat /root/state; ls /root/only-here 2>/dev/null || echo none")
        assert out.split() == ["source", "none"], other["name"]
    assert sh(client, forks[0], "cat /root/state").strip() == "mine"
    # The snapshot cannot be deleted while forks use it.
    assert_error(client.delete(f"/images/{image['id']}"), 409)
    for fork in forks:
        assert client.delete(f"/sandboxes/{fork['id']}").status_code == 200
    assert client.delete(f"/images/{image['id']}").status_code == 200


def test_bad_requests_and_other_orgs(client: httpx.Client, server: ServerProcess) -> None:
    box = create_sandbox(client, name="guarded")
    for count in (0, 21, -1, "many"):
        body = assert_error(client.post(f"/sandboxes/{box['id']}/fork", json={"count": count}), 400)
        assert "count" in json.dumps(body)
    assert_error(client.post(f"/sandboxes/{box['id']}/fork", json={}), 400)
    assert_error(client.post(f"/sandboxes/{box['id']}/snapshot", json={"name": "Bad Name"}), 400)
    assert_error(client.post(f"/sandboxes/{box['id']}/snapshot", json={"name": "code"}), 409)
    assert_error(client.post(f"/sandboxes/{'0' * 24}/snapshot", json={"name": "x"}), 404)
    assert_error(client.post("/sandboxes/nope/fork", json={"count": 1}), 404)
    snapshot(client, box, "once", "v1")
    assert_error(
        client.post(f"/sandboxes/{box['id']}/snapshot", json={"name": "once", "version": "v1"}),
        409,
    )
    other = server.client(server.new_tenant("snapshots-other"))
    with other:
        snap = other.post(f"/sandboxes/{box['id']}/snapshot", json={"name": "theirs"})
        assert_error(snap, 404)
        assert_error(other.post(f"/sandboxes/{box['id']}/fork", json={"count": 1}), 404)
        assert_error(other.post("/sandboxes", json={"name": "x", "image": "once:v1"}), 400)
    deleted = create_sandbox(client, name="deleted")
    assert client.delete(f"/sandboxes/{deleted['id']}").status_code == 200
    assert_error(client.post(f"/sandboxes/{deleted['id']}/snapshot", json={"name": "d"}), 400)


def test_fork_over_quota_creates_nothing(client: httpx.Client, server: ServerProcess) -> None:
    source = create_sandbox(client, name="quota-source")
    in_use = len(client.get("/sandboxes", params={"limit": 100}).json()["data"])
    images = len(client.get("/images").json())
    result = server.cli("orgs", "quota", "default", "--max-sandboxes", str(in_use + 2))
    assert result.returncode == 0, result.stderr
    try:
        body = assert_error(client.post(f"/sandboxes/{source['id']}/fork", json={"count": 3}), 403)
        assert body["error"] == "Org quota exceeded", body
        assert len(client.get("/sandboxes", params={"limit": 100}).json()["data"]) == in_use
        assert len(client.get("/images").json()) == images
        response = client.post(f"/sandboxes/{source['id']}/fork", json={"count": 2})
        assert response.status_code == 201, response.text
        assert len(response.json()["data"]) == 2
    finally:
        assert server.cli("orgs", "quota", "default", "--reset").returncode == 0


def _image_dir(image: dict[str, Any]) -> Any:
    return IMAGES_DIR / "orgs" / image["orgId"] / image["name"] / image["tag"]


def test_a_name_that_now_means_another_image_boots_that_image(client: httpx.Client) -> None:
    """Creates boot what an image name meant last time before the database answers
    (services/speculation.py); when the name has moved on, the new image is what runs."""
    source = create_sandbox(client, name="renamer")
    sh(client, source, "echo one > /root/which")
    snapshot(client, source, "moving", "1")
    first = create_sandbox(client, name="moving-1", image="moving")
    assert sh(client, first, "cat /root/which") == "one\n"
    sh(client, source, "echo two > /root/which")
    snapshot(client, source, "moving", "2")  # "moving" is now the newer one
    second = create_sandbox(client, name="moving-2", image="moving")
    assert second["image"] == "moving:2"
    assert sh(client, second, "cat /root/which") == "two\n"
    again = create_sandbox(client, name="moving-1b", image="moving:1")
    assert sh(client, again, "cat /root/which") == "one\n"
