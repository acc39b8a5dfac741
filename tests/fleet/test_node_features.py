"""What a node does beyond running sandboxes: a warm pool served through a replica, and the
images it holds deciding placement (n3 is started with an empty images dir)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.fleet import Fleet, NodeProcess

pytestmark = pytest.mark.fleet
EMPTY_IMAGES = Path(tempfile.mkdtemp(prefix="voidrun-empty-images-"))
atexit.register(shutil.rmtree, EMPTY_IMAGES, True)
NODE_ENV = {
    "n1": {"VOIDRUN_WARM_POOL_SIZE": "1", "VOIDRUN_NODE_LABELS": '{"region": "warm"}'},
    "n3": {"VOIDRUN_IMAGES_DIR": str(EMPTY_IMAGES), "VOIDRUN_NODE_LABELS": '{"region": "bare"}'},
}


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
        # the only node of region "bare" lacks it: a clear 503 naming the image and the node
        refused = client.post("/sandboxes", json={"name": "bare", "region": "bare"})
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert "code:" in body["error"] and "n3" in body["details"], body
        for box in boxes:
            assert client.delete(f"/sandboxes/{box}").status_code == 200


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
