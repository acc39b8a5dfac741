"""What a node does beyond running sandboxes: a warm pool served through a replica, the images
it holds deciding placement (n3 is started with an empty images dir), imports run on nodes and
images copied between nodes when a create needs them where they are not."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fleet import Fleet, NodeProcess, sql
from tests.support.images import IMAGES_DIR
from tests.support.oci_images import busybox_rootfs

pytestmark = pytest.mark.fleet
EMPTY_IMAGES = Path(tempfile.mkdtemp(prefix="voidrun-empty-images-"))
IMPORTS = Path(tempfile.mkdtemp(prefix="voidrun-fleet-imports-"))
for _made in (EMPTY_IMAGES, IMPORTS):
    atexit.register(shutil.rmtree, _made, True)
IMPORT_DIRS = {"VOIDRUN_IMAGE_IMPORT_DIRS": json.dumps([str(IMPORTS)])}
NODE_ENV = {
    "n1": {
        "VOIDRUN_WARM_POOL_SIZE": "1",
        "VOIDRUN_NODE_LABELS": '{"region": "warm"}',
        **IMPORT_DIRS,
    },
    "n2": IMPORT_DIRS,
    "n3": {
        "VOIDRUN_IMAGES_DIR": str(EMPTY_IMAGES),
        "VOIDRUN_NODE_LABELS": '{"region": "bare"}',
        **IMPORT_DIRS,
    },
}
NODE_DIRS = {"n1": IMAGES_DIR, "n2": IMAGES_DIR, "n3": EMPTY_IMAGES}


def data(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]


def node(fleet: Fleet, node_id: str) -> NodeProcess:
    return next(n for n in fleet.nodes if n.node_id == node_id)


def sandbox_dirs(node: NodeProcess) -> set[str]:
    return {p.name for p in node.state_dir.iterdir() if len(p.name) == 24}


def wait_for_pool(node: NodeProcess, ready: int) -> dict[str, Any]:
    for _ in range(1200):  # bounded by count, not by a time limit
        pool: dict[str, Any] = node.health()["pool"]
        if pool["ready"].get("namespace") == ready:
            return pool
        time.sleep(0.1)
    raise AssertionError(f"the pool of {node.node_id} never had {ready} ready: {pool}")


def holder(fleet: Fleet, sandbox_id: str) -> str:
    return next(n.node_id for n in fleet.nodes if (n.state_dir / sandbox_id).exists())


def test_placement_skips_a_node_without_the_image(fleet: Fleet) -> None:
    rows = {str(r["id"]): r for r in fleet.node_rows()}
    assert rows["n3"]["images"] == [] and rows["n1"]["images"] and rows["n2"]["images"]
    with fleet.replicas[0].client() as client:
        image = client.get("/images/name/code").json()
        assert image["id"] in rows["n2"]["images"]
        boxes = [
            str(data(client.post("/sandboxes", json={"name": f"img-{i}"}))["id"]) for i in range(6)
        ]
        assert "n3" not in {holder(fleet, box) for box in boxes}
        for box in boxes:
            assert client.delete(f"/sandboxes/{box}").status_code == 200
    # an image no ready node holds (its files are nowhere): a clear 503 naming it and the nodes
    org = sql(fleet.database_url, "SELECT id FROM orgs LIMIT 1")[0]["id"]
    sql(
        fleet.database_url,
        "INSERT INTO images (id, name, tag, description, size_gb, system, active, org_id,"
        " rootfs, created_at, status, progress, source)"
        " VALUES ('ghostimage00000000000001', 'ghost', '1', '', 1, false, true, $1,"
        " 'orgs/nowhere/ghost/1/rootfs', now(), 'ready', 100, 'test')",
        org,
    )
    try:
        with fleet.replicas[0].client() as client:
            refused = client.post("/sandboxes", json={"name": "ghost", "image": "ghost:1"})
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert "ghost:1" in body["error"] and "n3" in body["details"], body
    finally:
        sql(fleet.database_url, "DELETE FROM images WHERE id = 'ghostimage00000000000001'")


def wait_ready(client: httpx.Client, image_id: str) -> dict[str, Any]:
    for _ in range(1200):  # bounded by count, not by a time limit
        image: dict[str, Any] = client.get(f"/images/{image_id}").json()
        if image["status"] != "building":
            return image
        time.sleep(0.1)
    raise AssertionError(f"image {image_id} still building")


def image_files(node_id: str, org: str) -> Path:
    return NODE_DIRS[node_id] / "orgs" / org / "bb" / "1" / "rootfs"


def test_an_import_runs_on_a_node_and_is_copied_where_a_create_needs_it(fleet: Fleet) -> None:
    busybox_rootfs(IMPORTS / "bb")
    with fleet.replicas[1].client() as client:
        # a path outside the nodes' import directories: refused by the node, no row left
        refused = client.post("/images", json={"name": "bad", "path": "/etc"})
        assert refused.status_code == 403, refused.text
        assert "VOIDRUN_IMAGE_IMPORT_DIRS" in refused.json()["details"]
        assert all(i["name"] != "bad" for i in client.get("/images").json())
        started = client.post(
            "/images", json={"name": "bb", "version": "1", "path": str(IMPORTS / "bb")}
        )
        assert started.status_code == 202, started.text
        image_id = started.json()["id"]
        # the build's log streams from its node through the replica, ending in its status
        with client.stream("GET", f"/images/{image_id}/logs") as stream:
            events = "".join(stream.iter_text())
        assert '"status": "ready"' in events or '"status":"ready"' in events, events
    with fleet.replicas[0].client() as client:
        image = wait_ready(client, image_id)
        assert image["status"] == "ready" and image["progress"] == 100, image
    row = sql(fleet.database_url, "SELECT node_id, org_id, rootfs FROM images WHERE id = $1",
              image_id)[0]  # fmt: skip
    built_on, org = row["node_id"], row["org_id"]
    assert row["rootfs"] == f"orgs/{org}/bb/1/rootfs"  # relative: each node finds its own
    assert image_files(built_on, org).is_dir()
    assert image_id in {str(r["id"]): r for r in fleet.node_rows()}[built_on]["images"]
    # a region whose only node lacks it: the create copies it there from the builder first
    region, target = ("bare", "n3") if built_on != "n3" else ("warm", "n1")
    assert not image_files(target, org).exists()
    with fleet.replicas[0].client() as client:
        box = data(
            client.post("/sandboxes", json={"name": "bb", "image": "bb:1", "region": region})
        )
        assert holder(fleet, box["id"]) == target
        out = data(
            client.post(
                f"/sandboxes/{box['id']}/exec",
                json={"command": "grep app /etc/passwd && stat -c %u /home/app"},
            )
        )
        assert out["stdout"].split() == ["app:x:1000:1000:app:/home/app:/bin/sh", "1000"], out
        copied = image_files(target, org)
        assert (copied / "home" / "app").stat().st_uid == 100000 + 1000  # shifted again
        assert (copied / "bin" / "ls").readlink() == Path("busybox")
        rows = {str(r["id"]): r for r in fleet.node_rows()}
        assert image_id in rows[target]["images"]
        # in use: not deleted; once its sandbox is gone, deleted from every node holding it
        assert client.delete(f"/images/{image_id}").status_code == 409
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
        assert client.delete(f"/images/{image_id}").status_code == 200
    assert not image_files(built_on, org).exists() and not image_files(target, org).exists()


def test_a_create_through_a_replica_is_served_from_the_nodes_pool(fleet: Fleet) -> None:
    warm_node = node(fleet, "n1")
    handed_out = wait_for_pool(warm_node, 1)["handedOut"]
    assert node(fleet, "n2").health()["pool"]["ready"] == {}  # pool size 0: none
    pooled = sandbox_dirs(warm_node)
    assert len(pooled) == 1
    with fleet.replicas[1].client() as client:
        box = data(client.post("/sandboxes", json={"name": "from-pool", "region": "warm"}))
        assert box["id"] in pooled  # the warm sandbox, not a new one
        out = data(client.post(f"/sandboxes/{box['id']}/exec", json={"command": "hostname"}))
        assert out["stdout"].strip() == "from-pool"  # handed out: the caller's hostname
    assert wait_for_pool(warm_node, 1)["handedOut"] == handed_out + 1  # and the pool refilled
    refill = sandbox_dirs(warm_node) - {box["id"]}
    assert len(refill) == 1 and refill != pooled
    with fleet.replicas[0].client() as client:
        assert client.delete(f"/sandboxes/{box['id']}").status_code == 200
    assert sandbox_dirs(warm_node) == refill
    # a clean stop destroys what waits in the pool (last in this module: n1 stays down)
    warm_node.stop()
    assert sandbox_dirs(warm_node) == set()
