"""The E2B control plane through the SDK: create, info, list, timeout, pause/connect, kill;
the same sandboxes through the VoidRun API; other orgs and wrong access tokens refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from e2b import (
    AuthenticationException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)

from tests.support.server import ServerProcess


@pytest.fixture
def sandbox(e2b_env: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(metadata={"suite": "e2b"}, envs={"GREETING": "hi"}, timeout=600)
    yield box
    box.kill()


def test_create_maps_onto_a_voidrun_sandbox(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    assert sandbox.commands.run("echo $GREETING").stdout == "hi\n"
    with e2b_env.client() as api:
        row = api.get(f"/sandboxes/{sandbox.sandbox_id}").json()["data"]
    assert row["status"] == "running"
    assert row["image"].split(":")[0] == "code"  # templateID "base"
    assert row["labels"] == {"suite": "e2b"}
    info = sandbox.get_info()
    assert info.sandbox_id == sandbox.sandbox_id
    assert info.metadata == {"suite": "e2b"}
    assert info.state == SandboxState.RUNNING
    assert info.end_at - datetime.now(UTC) > timedelta(seconds=500)


def test_set_timeout_moves_the_end(sandbox: Sandbox) -> None:
    sandbox.set_timeout(60)
    assert sandbox.get_info().end_at - datetime.now(UTC) < timedelta(seconds=61)
    sandbox.set_timeout(3000)
    assert sandbox.get_info().end_at - datetime.now(UTC) > timedelta(seconds=2900)


def test_list_filters_by_metadata_and_state(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    mark = uuid.uuid4().hex[:12]  # our label values: at most 20 characters
    other = Sandbox.create(metadata={"mark": mark})
    try:
        found = Sandbox.list(query=SandboxQuery(metadata={"mark": mark})).next_items()
        assert [s.sandbox_id for s in found] == [other.sandbox_id]
        running = Sandbox.list(query=SandboxQuery(state=[SandboxState.RUNNING]), limit=1)
        first = running.next_items()
        assert len(first) == 1
        assert running.has_next  # two running: a second page
        seen = {s.sandbox_id for s in first} | {s.sandbox_id for s in running.next_items()}
        assert {sandbox.sandbox_id, other.sandbox_id} <= seen | {
            s.sandbox_id for s in Sandbox.list().next_items()
        }
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        assert sandbox.sandbox_id not in {s.sandbox_id for s in paused}
    finally:
        other.kill()


def test_pause_then_connect_resumes(sandbox: Sandbox) -> None:
    sandbox.files.write("/tmp/kept.txt", "still here")
    sandbox.pause()
    assert sandbox.get_info().state == SandboxState.PAUSED
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED
    again = Sandbox.connect(sandbox.sandbox_id)
    assert again.get_info().state == SandboxState.RUNNING
    assert again.files.read("/tmp/kept.txt") == "still here"


def test_kill_ends_it(e2b_env: ServerProcess) -> None:
    box = Sandbox.create()
    assert box.kill() is True
    assert box.is_running() is False
    with pytest.raises(SandboxNotRunningException):  # the proxy's "was not found"
        box.commands.run("true")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(box.sandbox_id)
    assert Sandbox.kill(box.sandbox_id) is False
    with e2b_env.client() as api:
        assert api.get(f"/sandboxes/{box.sandbox_id}").json()["data"]["status"] == "deleted"


def test_voidrun_sandbox_is_usable_through_e2b(e2b_env: ServerProcess) -> None:
    with e2b_env.client() as api:
        made = api.post("/sandboxes", json={"name": "from-voidrun"}).json()["data"]
    try:
        box = Sandbox.connect(made["id"], timeout=60)
        assert box.commands.run("echo shared").stdout == "shared\n"
        # connecting gave it no end time: it is not deleted in 60 s, as VoidRun made it
        assert box.get_info().end_at - datetime.now(UTC) > timedelta(hours=1)
    finally:
        with e2b_env.client() as api:
            api.delete(f"/sandboxes/{made['id']}")


def test_another_orgs_key_gets_not_found(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    stranger = e2b_env.new_tenant(f"e2b-{uuid.uuid4().hex[:8]}")
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox.sandbox_id, api_key=stranger)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id, api_key=stranger)
    assert Sandbox.kill(sandbox.sandbox_id, api_key=stranger) is False
    assert sandbox.sandbox_id not in {
        s.sandbox_id for s in Sandbox.list(api_key=stranger).next_items()
    }
    assert sandbox.commands.run("true").exit_code == 0  # untouched


def test_wrong_key_and_wrong_access_token_are_refused(
    e2b_env: ServerProcess, sandbox: Sandbox
) -> None:
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="vr_not_a_key")
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
    url = f"{e2b_env.url}/e2b/files"
    for token in (None, "vre_wrong", sandbox._envd_access_token + "x"):
        sent = dict(headers, **({"X-Access-Token": token} if token else {}))
        answer = httpx.get(url, params={"path": "/etc/hostname"}, headers=sent)
        assert answer.status_code == 401
        assert answer.json()["code"] == 401
    other = Sandbox.create()
    try:
        # one sandbox's token does not open another
        sent = dict(headers, **{"X-Access-Token": other._envd_access_token})
        assert httpx.get(url, params={"path": "/etc/hostname"}, headers=sent).status_code == 401
    finally:
        other.kill()
    right = dict(headers, **{"X-Access-Token": sandbox._envd_access_token})
    assert httpx.get(url, params={"path": "/etc/hostname"}, headers=right).status_code == 200


def test_unknown_ids_and_bad_input_are_e2b_errors(e2b_env: ServerProcess) -> None:
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info("0" * 24)
    with pytest.raises(SandboxException):  # no such route (501), never a 500
        Sandbox.connect("../../etc")
    key = {"X-API-KEY": e2b_env.api_key}
    for body in ({"templateID": 5}, {"templateID": "base", "timeout": "x"}, {"templateID": ""}):
        answer = httpx.post(f"{e2b_env.url}/e2b/v2/sandboxes", json=body, headers=key)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == 400
    answer = httpx.post(
        f"{e2b_env.url}/e2b/v2/sandboxes", json={"templateID": "no-such-image"}, headers=key
    )
    assert 400 <= answer.status_code < 500
    assert set(answer.json()) == {"code", "message"}


def test_network_and_bearer_key(e2b_env: ServerProcess) -> None:
    box = Sandbox.create(allow_internet_access=False, network={"deny_out": ["10.9.9.9"]})
    try:
        with e2b_env.client() as api:
            network = api.get(f"/sandboxes/{box.sandbox_id}").json()["data"]["network"]
        assert network["allowInternetAccess"] is False
        assert network["denyOut"] == ["10.9.9.9"]
        bearer = {"Authorization": f"Bearer {e2b_env.api_key}"}
        answer = httpx.get(f"{e2b_env.url}/e2b/sandboxes/{box.sandbox_id}", headers=bearer)
        assert answer.status_code == 200
        assert answer.json()["allowInternetAccess"] is False
        assert answer.json()["lifecycle"] == {"autoResume": True, "onTimeout": "kill"}
    finally:
        box.kill()


def test_unserved_parts_of_the_api_say_so(e2b_env: ServerProcess, sandbox: Sandbox) -> None:
    key = {"X-API-KEY": e2b_env.api_key}
    answer = httpx.get(f"{e2b_env.url}/e2b/templates", headers=key)
    assert answer.status_code == 501
    assert answer.json() == {
        "code": 501,
        "message": "GET /e2b/templates is not implemented by this server",
    }
    with pytest.raises(SandboxException) as caught:
        sandbox.get_metrics()
    assert "not implemented" in str(caught.value)
