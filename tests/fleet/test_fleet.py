"""A fleet on one machine: two API replicas and three node daemons on one PostgreSQL.

Placement, routing of the data plane through either replica to the sandbox's node, and the
node table's CLI. Failure handling (kill -9) is in ``test_failures.py``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support.fleet import Fleet

pytestmark = pytest.mark.fleet


def data(response: httpx.Response) -> Any:
    assert response.status_code in (200, 201), response.text
    return response.json()["data"]


def test_create_exec_delete_through_either_replica(fleet: Fleet) -> None:
    first, second = fleet.replicas
    with first.client() as a, second.client() as b:
        box = data(a.post("/sandboxes", json={"name": "fleet-one"}))
        assert "nodeId" not in box  # VOIDRUN_EMIT_NODE_ID is off
        ran = b.post(f"/sandboxes/{box['id']}/exec", json={"command": "echo hi-$((6*7))"})
        assert "hi-42" in ran.text
        holder = next(n for n in fleet.nodes if (n.state_dir / box["id"]).exists())
        assert b.delete(f"/sandboxes/{box['id']}").status_code == 200
        assert data(a.get(f"/sandboxes/{box['id']}"))["status"] == "deleted"
        assert not (holder.state_dir / box["id"]).exists()  # destroyed on its node
