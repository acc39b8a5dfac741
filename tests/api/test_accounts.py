"""Account endpoints over HTTP against a real server process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from tests.conftest import database_url
from tests.support.http import assert_error
from tests.support.server import ApiServer, ServerProcess

KEY_FORMAT = re.compile(r"^vr_[A-Za-z0-9_-]{43}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def new_key(client: httpx.Client, name: str = "test") -> dict[str, str]:
    response = client.post("/orgs/apikeys", json={"keyName": name})
    assert response.status_code == 200, response.text
    return response.json()


def second_org(server: ApiServer, org: str) -> str:
    """An independent tenant (through the CLI for a server process); its API key."""
    plain = server.new_tenant(org)
    assert KEY_FORMAT.match(plain)
    return plain


def test_version_needs_no_key(server: ServerProcess) -> None:
    response = httpx.get(f"{server.api}/version")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"version", "commit", "buildTime"}
    assert all(isinstance(v, str) for v in body.values()) and body["version"]


def test_health_checks_the_database(server: ServerProcess) -> None:
    body = httpx.get(f"{server.api}/health").json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    # sandboxes: "ok" with every isolation's state, or why this server cannot run them
    assert body["sandboxes"] == "ok" or "isolations" not in body


def test_missing_and_unknown_keys_are_401(server: ServerProcess) -> None:
    missing = assert_error(httpx.get(f"{server.api}/users/me"), 401)
    assert missing["error"] == "authentication required (X-API-Key or Bearer token)"
    wrong = httpx.get(f"{server.api}/users/me", headers={"X-API-Key": "vr_" + "x" * 43})
    assert assert_error(wrong, 401)["error"] == "invalid or inactive API key"


def test_key_and_bearer_together_is_400(server: ServerProcess) -> None:
    headers = {"X-API-Key": server.api_key, "Authorization": "Bearer abc"}
    assert_error(httpx.get(f"{server.api}/users/me", headers=headers), 400)


def test_users_me_and_query_key(server: ServerProcess) -> None:
    with server.client() as client:
        me = client.get("/users/me").json()
    assert me["email"] == "admin@localhost" and me["name"] == "admin"
    assert ISO.match(me["createdAt"])
    assert [o["name"] for o in me["orgs"]] == ["default"]
    # ?apiKey= is for WebSockets only (tests/security/test_http_limits.py has the details)
    by_query = httpx.get(f"{server.api}/users/me", params={"apiKey": server.api_key})
    assert "X-API-Key header" in assert_error(by_query, 401)["details"]


def test_key_lifecycle(server: ServerProcess) -> None:
    with server.client() as admin:
        created = new_key(admin, "ci")
        assert set(created) == {"plainKey", "keyId", "keyName", "orgId", "createdAt", "expiresIn"}
        assert KEY_FORMAT.match(created["plainKey"]) and created["keyName"] == "ci"
        listed = {k["id"]: k for k in admin.get("/orgs/apikeys").json()}
        entry = listed[created["keyId"]]
        assert entry["lastUsedAt"] is None and entry["isActive"] is True
        assert entry["scopes"] == ["*"] and "plainKey" not in entry
        assert created["plainKey"] not in admin.get("/orgs/apikeys").text

        with server.client(created["plainKey"]) as user:
            assert user.get("/users/me").status_code == 200
            used = {k["id"]: k for k in admin.get("/orgs/apikeys").json()}[created["keyId"]]
            assert ISO.match(used["lastUsedAt"])

            off = admin.post(f"/orgs/apikeys/{created['keyId']}/activate", json={"isActive": False})
            assert off.json() == {"status": "success", "message": "API key deactivated"}
            assert_error(user.get("/users/me"), 401)

            on = admin.post(f"/orgs/apikeys/{created['keyId']}/activate", json={"isActive": True})
            assert on.json()["message"] == "API key activated"
            assert user.get("/users/me").status_code == 200

            touched = admin.patch(f"/orgs/apikeys/{created['keyId']}/touch")
            assert touched.json() == {"status": "success", "message": "API key touched"}

            revoked = admin.delete(f"/orgs/apikeys/{created['keyId']}")
            assert revoked.json() == {"status": "success", "message": "API key revoked"}
            assert_error(user.get("/users/me"), 401)
            assert_error(admin.delete(f"/orgs/apikeys/{created['keyId']}"), 404)


def test_tenants_cannot_touch_each_others_keys(server: ServerProcess) -> None:
    other_key = second_org(server, "acme")
    with server.client() as admin, server.client(other_key) as other:
        mine = new_key(admin, "mine")["keyId"]
        assert mine not in {k["id"] for k in other.get("/orgs/apikeys").json()}
        assert_error(other.patch(f"/orgs/apikeys/{mine}/touch"), 404)
        assert_error(other.post(f"/orgs/apikeys/{mine}/activate", json={"isActive": False}), 404)
        assert_error(other.delete(f"/orgs/apikeys/{mine}"), 404)
        assert admin.get("/users/me").status_code == 200
        assert {k["id"] for k in admin.get("/orgs/apikeys").json()} >= {mine}

        members = other.get("/orgs/users").json()
        assert members["status"] == "success" and members["message"] == "users"
        assert [u["email"] for u in members["data"]] == ["owner@acme.example"]
        admin_members = [u["email"] for u in admin.get("/orgs/users").json()["data"]]
        assert "owner@acme.example" not in admin_members and "admin@localhost" in admin_members
        assert [o["name"] for o in other.get("/users/me").json()["orgs"]] == ["acme"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"keyName": ""}, 400),
        ({"keyName": "   "}, 400),
        ({"keyName": "x" * 26}, 400),
        ({"keyName": 5}, 400),
        ({"keyName": None}, 400),
        ([1, 2], 400),
    ],
)
def test_bad_key_creation_input(server: ServerProcess, body: object, status: int) -> None:
    with server.client() as client:
        assert_error(client.post("/orgs/apikeys", json=body), status)


def test_malformed_and_oversized_bodies(server: ServerProcess) -> None:
    with server.client() as client:
        headers = {"content-type": "application/json"}
        bad_json = client.post("/orgs/apikeys", content=b'{"keyName":', headers=headers)
        assert assert_error(bad_json, 400)["error"] == "Invalid JSON body"
        huge = client.post("/orgs/apikeys", content=b" " * (3 * 1024 * 1024), headers=headers)
        assert_error(huge, 413)
        assert_error(client.get("/users/me", params={"q": "x" * 20000}), 414)
        key_id = new_key(client)["keyId"]
        bad_flag = client.post(f"/orgs/apikeys/{key_id}/activate", json={"isActive": "yes"})
        assert_error(bad_flag, 400)
        assert_error(client.post(f"/orgs/apikeys/{key_id}/activate", content=b""), 400)


@pytest.mark.parametrize("key_id", ["0" * 24, "not-an-id", "x" * 300])
def test_unknown_key_ids_are_404(server: ServerProcess, key_id: str) -> None:
    with server.client() as client:
        assert_error(client.patch(f"/orgs/apikeys/{key_id}/touch"), 404)
        assert_error(client.delete(f"/orgs/apikeys/{key_id}"), 404)


def test_request_id_on_every_response(server: ServerProcess) -> None:
    with server.client() as client:
        for response in (
            client.get("/users/me"),
            client.get("/nope"),
            httpx.get(f"{server.api}/users/me"),
            client.get("/version", headers={"X-Request-Id": "trace-123"}),
        ):
            assert response.headers.get("x-request-id")
        assert assert_error(client.get("/nope"), 404)["error"] == "Not Found"
        echoed = client.get("/version", headers={"X-Request-Id": "trace-123"})
        assert echoed.headers["x-request-id"] == "trace-123"


def test_metrics_count_requests_per_route(server: ServerProcess) -> None:
    with server.client() as client:
        client.get("/users/me")
    text = httpx.get(f"{server.url}/metrics").text
    assert re.search(
        r'voidrun_http_requests_total\{method="GET",route="/api/users/me",status="200"\} \d', text
    )
    assert "voidrun_http_request_duration_seconds_bucket" in text


def test_cli_revocation_applies_to_a_running_server(server: ServerProcess) -> None:
    with server.client() as admin:
        created = new_key(admin, "cli-revoked")
        with server.client(created["plainKey"]) as user:
            assert user.get("/users/me").status_code == 200
            listing = server.cli("keys", "list", "--org", "default", "--json")
            listed = [json.loads(line) for line in listing.stdout.splitlines()]
            assert created["keyId"] in {k["id"] for k in listed}
            result = server.cli("keys", "revoke", created["keyId"], "--org", "default")
            assert result.returncode == 0, result.stderr
            assert_error(user.get("/users/me"), 401)


def test_writes_are_visible_when_the_response_arrives(server: ServerProcess) -> None:
    """A revoked key fails on the very next request (commit before response, no cache)."""
    with server.client() as admin:
        for _ in range(20):
            created = new_key(admin, "race")
            assert admin.delete(f"/orgs/apikeys/{created['keyId']}").status_code == 200
            revoked = httpx.get(
                f"{server.api}/users/me", headers={"X-API-Key": created["plainKey"]}
            )
            assert revoked.status_code == 401


def warm(client: httpx.Client) -> None:
    """Use a key until the server serves it from its key cache (the first use writes
    lastUsedAt and fills the cache; the uses after it are cache hits)."""
    for _ in range(3):
        assert client.get("/users/me").status_code == 200


def test_a_cached_key_revoked_through_the_cli_is_refused_by_the_next_request(
    server: ServerProcess,
) -> None:
    """The CLI is another process writing the same database: the server's key cache must
    notice its revocation on the very next request, with no delay in between."""
    with server.client() as admin:
        for _ in range(3):
            created = new_key(admin, "cli-cached")
            with server.client(created["plainKey"]) as user:
                warm(user)
                result = server.cli("keys", "revoke", created["keyId"], "--org", "default")
                assert result.returncode == 0, result.stderr
                assert_error(user.get("/users/me"), 401)
                assert_error(user.get("/sandboxes"), 401)
        assert admin.get("/users/me").status_code == 200  # other keys stay valid


def test_a_cached_key_revoked_or_deactivated_through_the_api_is_refused_at_once(
    server: ServerProcess,
) -> None:
    with server.client() as admin:
        for _ in range(5):
            created = new_key(admin, "api-cached")
            with server.client(created["plainKey"]) as user:
                warm(user)
                path = f"/orgs/apikeys/{created['keyId']}"
                off = admin.post(f"{path}/activate", json={"isActive": False})
                assert off.status_code == 200
                assert_error(user.get("/users/me"), 401)
                on = admin.post(f"{path}/activate", json={"isActive": True})
                assert on.status_code == 200
                warm(user)
                assert admin.delete(path).status_code == 200
                assert_error(user.get("/users/me"), 401)


@pytest.mark.postgres
def test_revocation_through_one_server_applies_to_another_at_once(tmp_path: Path) -> None:
    """Two server processes on one PostgreSQL database, each with its key cache: a key
    revoked (or deactivated) through server A is refused by the next request to server B."""
    url = database_url("postgres", tmp_path)
    a = ServerProcess(data_dir=tmp_path / "a", database_url=url).start()
    try:
        b = ServerProcess(data_dir=tmp_path / "b", database_url=url, api_key=a.api_key).start()
        try:
            with a.client() as admin:
                for _ in range(3):
                    created = new_key(admin, "two-servers")
                    path = f"/orgs/apikeys/{created['keyId']}"
                    with b.client(created["plainKey"]) as on_b:
                        warm(on_b)
                        assert admin.post(f"{path}/activate", json={"isActive": False}).is_success
                        assert_error(on_b.get("/users/me"), 401)
                        assert admin.post(f"{path}/activate", json={"isActive": True}).is_success
                        warm(on_b)
                        assert admin.delete(path).status_code == 200
                        assert_error(on_b.get("/users/me"), 401)
        finally:
            b.stop()
    finally:
        a.stop()
