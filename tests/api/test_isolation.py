"""``isolation`` on create: stored, returned, validated; health names every isolation.

Sandboxes of several drivers side by side on one server are in the driver modules' own API
tests; this module holds what every server does whatever drivers this host has.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.http import assert_error
from tests.support.sandboxes import create_sandbox, sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    # "nosuch" is a driver this build does not know: offered, so it must show as unavailable
    with sandbox_server(
        VOIDRUN_ISOLATIONS='["namespace", "nosuch"]', VOIDRUN_WARM_POOL_SIZE="0"
    ) as proc:
        yield proc


def test_default_isolation_is_stored_and_returned(server: ServerProcess) -> None:
    with server.client() as client:
        box = create_sandbox(client, name="plain")
        assert box["isolation"] == "namespace"
        again = client.get(f"/sandboxes/{box['id']}").json()["data"]
        assert again["isolation"] == "namespace"
        listed = client.get("/sandboxes").json()["data"]
        assert {b["id"]: b["isolation"] for b in listed}[box["id"]] == "namespace"
        named = create_sandbox(client, name="named", isolation="namespace")
        assert named["isolation"] == "namespace"
        out = client.post(f"/sandboxes/{named['id']}/exec", json={"command": "echo hi"})
        assert out.json()["data"]["stdout"] == "hi\n"


def test_unknown_and_unavailable_isolations_are_400(server: ServerProcess) -> None:
    with server.client() as client:
        before = client.get("/sandboxes").json()["meta"]["total"]
        wrong = client.post("/sandboxes", json={"name": "x", "isolation": "vmware"})
        assert_error(wrong, 400)
        assert "vmware" in wrong.json()["error"]
        assert "namespace" in wrong.json()["details"]  # what this server runs
        missing = client.post("/sandboxes", json={"name": "x", "isolation": "nosuch"})
        assert_error(missing, 400)
        assert "not available" in missing.json()["error"]
        typed = client.post("/sandboxes", json={"name": "x", "isolation": 3})
        assert_error(typed, 400)
        assert client.get("/sandboxes").json()["meta"]["total"] == before  # nothing made


def test_health_reports_every_offered_isolation(server: ServerProcess) -> None:
    with server.client() as client:
        health = client.get("/health").json()
    assert health["sandboxes"] == "ok"
    isolations = health["isolations"]
    assert isolations["namespace"] == {"available": True, "default": True}
    assert isolations["nosuch"]["available"] is False
    assert "nosuch" in isolations["nosuch"]["reason"]
