"""Contract areas of the sandbox API with real sandboxes: tenancy (§C.1), pagination (§C.3),
create-time bounds (§C.4) and the status dialects (decision 1, ``VOIDRUN_STATUS_DIALECT``)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from tests.api.test_accounts import second_org
from tests.support.http import assert_error
from tests.support.sandboxes import (
    create_sandbox,
    sandbox_server,
    shared_sandbox_server,  # noqa: F401 - the "server" fixture
)
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]
SDK_UA = {"User-Agent": "VoidRun-Python-SDK/0.1.0"}
NAME_RULE = (
    "invalid name: value must be a valid DNS-1123 subdomain (lowercase letters, digits, "
    "'-' and '.', starting and ending with a letter or digit, at most 253 characters)"
)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def tenant(server: ServerProcess) -> str:
    """A second org whose sandboxes this module alone creates (exact totals)."""
    return second_org(server, "contract-tenant")


# -- §C.1 tenancy ----------------------------------------------------------------------------


def test_tenant_fields_in_the_body_never_override_the_key(
    server: ServerProcess, client: httpx.Client, tenant: str
) -> None:
    me = client.get("/users/me").json()
    org_id = me["orgs"][0]["id"]
    with server.client(tenant) as other:
        other_me = other.get("/users/me").json()
    foreign_org, foreign_user = other_me["orgs"][0]["id"], other_me["id"]

    # userId (and fields the server owns: createdBy, id, status, diskMB) are ignored.
    body = {
        "name": "mine",
        "userId": foreign_user,
        "createdBy": foreign_user,
        "id": "0" * 24,
        "status": "stopped",
        "diskMB": 1,
    }
    box = create_sandbox(client, **body)
    assert (box["orgId"], box["createdBy"]) == (org_id, me["id"])
    assert box["id"] != "0" * 24 and re.fullmatch(r"[0-9a-f]{24}", str(box["id"]))
    assert (box["status"], box["diskMB"]) == ("running", 256)
    # orgId equal to the key's org is accepted; a different one is refused (§C.1 [R]: 403).
    same = create_sandbox(client, name="same-org", orgId=org_id, userId="not-even-an-id")
    assert (same["orgId"], same["createdBy"]) == (org_id, me["id"])
    refused = client.post("/sandboxes", json={"name": "theirs", "orgId": foreign_org})
    assert assert_error(refused, 403) == {
        "error": "orgId does not match the API key's org",
        "details": "omit orgId",
    }

    with server.client(tenant) as other:
        assert other.get("/sandboxes").json()["meta"]["total"] == 0
        for sid in (box["id"], same["id"]):
            assert assert_error(other.get(f"/sandboxes/{sid}"), 404) == {
                "error": "Sandbox not found"
            }
    listed = {b["id"]: b for b in client.get("/sandboxes", params={"limit": 100}).json()["data"]}
    assert listed[box["id"]]["orgId"] == org_id and listed[box["id"]]["createdBy"] == me["id"]
    for sid in (box["id"], same["id"]):
        client.delete(f"/sandboxes/{sid}")


# -- §C.3 pagination -------------------------------------------------------------------------


def page(client: httpx.Client, **params: object) -> tuple[list[str], dict[str, int]]:
    response = client.get("/sandboxes", params=params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"status", "message", "data", "meta"}
    assert (body["status"], body["message"]) == ("success", "Sandboxes fetched")
    assert set(body["meta"]) == {"page", "limit", "total", "totalPages"}
    assert all(type(v) is int for v in body["meta"].values())
    return [b["id"] for b in body["data"]], body["meta"]


def test_pagination_defaults_and_clamps(server: ServerProcess, tenant: str) -> None:
    with server.client(tenant) as client:
        assert page(client) == ([], {"page": 1, "limit": 20, "total": 0, "totalPages": 0})
        ids = [str(create_sandbox(client, name=f"pg-{i}")["id"]) for i in range(3)]
        newest_first = ids[::-1]
        default = {"page": 1, "limit": 20, "total": 3, "totalPages": 1}
        assert page(client) == (newest_first, default)
        # page: non-numeric or < 1 → 1; limit: ≤ 0 or non-numeric → 20 (never a 400)
        for junk in ("0", "-1", "-99999999999999999999", "x", "", "1.5", "2e1"):
            assert page(client, page=junk, limit=junk) == (newest_first, default), junk
        # limit above 100 clamps to 100, however large
        for huge in ("101", "1000", "99999999999999999999999"):
            assert page(client, limit=huge) == (
                newest_first,
                {"page": 1, "limit": 100, "total": 3, "totalPages": 1},
            )
        # meta.limit is the page size used; totalPages = ceil(total / limit)
        assert page(client, limit=2) == (
            newest_first[:2],
            {"page": 1, "limit": 2, "total": 3, "totalPages": 2},
        )
        assert page(client, page=2, limit=2) == (
            newest_first[2:],
            {"page": 2, "limit": 2, "total": 3, "totalPages": 2},
        )
        assert page(client, page=3, limit=1) == (
            newest_first[2:],
            {"page": 3, "limit": 1, "total": 3, "totalPages": 3},
        )
        # past the end: an empty page, not an error (however far past: no database overflow)
        for far in ("3", "4611686018427387904", "99999999999999999999"):
            assert page(client, page=far, limit=2) == (
                [],
                {"page": int(far), "limit": 2, "total": 3, "totalPages": 2},
            )
        # deleted sandboxes leave data and total
        client.delete(f"/sandboxes/{ids[1]}")
        assert page(client, limit=1) == (
            [ids[2]],
            {"page": 1, "limit": 1, "total": 2, "totalPages": 2},
        )
        for sid in (ids[0], ids[2]):
            client.delete(f"/sandboxes/{sid}")
        assert page(client) == ([], {"page": 1, "limit": 20, "total": 0, "totalPages": 0})


# -- §C.4 create-time bounds -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"name": "a" * 254}, {"error": NAME_RULE, "details": "a" * 254}),
        (
            {"name": "a" * 63 + "." + "b" * 190},
            {"error": NAME_RULE, "details": "a" * 63 + "." + "b" * 190},
        ),  # fmt: skip
        ({"name": "   "}, {"error": "invalid name: value cannot be empty"}),
        ({"name": "-bad"}, {"error": NAME_RULE, "details": "-bad"}),
        ({"name": "ok", "cpu": 0}, {"error": "invalid cpu count: must be between 1 and 8"}),
        ({"name": "ok", "cpu": -1}, {"error": "invalid cpu count: must be between 1 and 8"}),
        ({"name": "ok", "cpu": 9}, {"error": "invalid cpu count: must be between 1 and 8"}),
        (
            {"name": "ok", "mem": 1023},
            {"error": "invalid memory size: must be between 1 GiB and 16 GiB"},
        ),
        (
            {"name": "ok", "mem": 16385},
            {"error": "invalid memory size: must be between 1 GiB and 16 GiB"},
        ),
        (
            {"name": "ok", "mem": 0},
            {"error": "invalid memory size: must be between 1 GiB and 16 GiB"},
        ),
        (
            {"name": "ok", "ports": [{"port": p} for p in range(8000, 8005)]},
            {"error": "too many ports: 5 given, max is 4"},
        ),
        (
            {"name": "ok", "ports": [{"port": 1}], "publishPorts": [2, 3, 4, 5]},
            {"error": "too many ports: 5 given, max is 4"},
        ),
        (
            {"name": "ok", "publishPorts": [1, 2, 3, 4, 5]},
            {"error": "too many publishPorts: 5 given, max is 4"},
        ),
        (
            {"name": "ok", "ports": [{"protocol": "tcp", "port": 0}]},
            {"error": "invalid port 0: must be between 1 and 65535"},
        ),
        (
            {"name": "ok", "ports": [{"protocol": "http", "port": 65536}]},
            {"error": "invalid port 65536: must be between 1 and 65535"},
        ),
        (
            {"name": "ok", "publishPorts": [0]},
            {"error": "invalid publishPort 0: must be between 1 and 65535"},
        ),
        (
            {"name": "ok", "ports": [{"protocol": "tcp", "port": 22}], "publishPorts": [22]},
            {"error": "duplicate port 22"},
        ),
    ],
)
def test_create_bounds_are_exact_400s(
    client: httpx.Client, body: dict[str, object], expected: dict[str, str]
) -> None:
    assert assert_error(client.post("/sandboxes", json=body), 400) == expected


@pytest.mark.parametrize("protocol", ["udp", "HTTP", "", 80])
def test_port_protocols_other_than_http_and_tcp_are_400(
    client: httpx.Client, protocol: object
) -> None:
    response = client.post(
        "/sandboxes", json={"name": "ok", "ports": [{"protocol": protocol, "port": 80}]}
    )
    body = assert_error(response, 400)
    assert body["error"] == "Invalid request"
    assert "ports" in body["details"] and "protocol" in body["details"]


def test_upper_bounds_are_accepted(client: httpx.Client) -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])  # 253 characters
    ports = [
        {"protocol": "http", "port": 1},
        {"protocol": "tcp", "port": 65535},
        {"protocol": "http", "port": 8080},
        {"protocol": "tcp", "port": 5432},
    ]
    box = create_sandbox(client, name=f"  {name} ", cpu=8, mem=16384, ports=ports)
    assert (box["name"], box["cpu"], box["mem"]) == (name, 8, 16384)
    assert box["ports"] == ports and box["publishPorts"] == [1, 65535, 8080, 5432]
    urls = client.get(f"/sandboxes/{box['id']}/public-urls").json()["data"]
    # the preview proxy's path form (docs/previews.md); tcp ports have no URL
    assert [(u["port"], u["public"]) for u in urls] == [(1, False), (8080, False)]
    for u in urls:
        assert u["url"].endswith(f"/api/sandboxes/{box['id']}/ports/{u['port']}/")
        assert u["trafficToken"].startswith("vrt_")
    legacy = create_sandbox(client, name="legacy-ports", cpu=1, mem=1024, publishPorts=[3000])
    assert legacy["ports"] == [{"protocol": "http", "port": 3000}]
    assert legacy["publishPorts"] == [3000]
    for sid in (box["id"], legacy["id"]):
        assert client.delete(f"/sandboxes/{sid}").status_code == 200


# -- decision 1: status dialects -------------------------------------------------------------


def seen_status(client: httpx.Client, sid: object, headers: dict[str, str]) -> tuple[str, ...]:
    """The status as GET, list and PATCH report it to a caller with ``headers``."""
    single = client.get(f"/sandboxes/{sid}", headers=headers).json()["data"]["status"]
    listed = client.get("/sandboxes", params={"limit": 100}, headers=headers).json()["data"]
    in_list = next(b["status"] for b in listed if b["id"] == sid)
    patched = client.patch(f"/sandboxes/{sid}", json={"autoSleep": True}, headers=headers)
    return single, in_list, patched.json()["data"]["status"]


HEADERS: dict[str, dict[str, str]] = {
    "sdk-ua": SDK_UA,
    "sdk-ua-lowercase": {"User-Agent": "voidrun-python-sdk/0.4.0"},
    "httpx-ua": {"User-Agent": "python-httpx/0.28.1"},
    "sdk-word-ua": {"User-Agent": "sdk-tool/1.0"},
    "no-ua": {"User-Agent": ""},
}


def dialect_view(server: ServerProcess) -> dict[str, dict[str, tuple[str, ...]]]:
    """For a paused and a stopped sandbox: what each kind of caller is told."""
    views: dict[str, dict[str, tuple[str, ...]]] = {}
    with server.client() as client:
        for state, verb in (("paused", "pause"), ("stopped", "stop")):
            sid = create_sandbox(client, name=f"dialect-{state}")["id"]
            assert client.post(f"/sandboxes/{sid}/{verb}").status_code == 200
            views[state] = {k: seen_status(client, sid, h) for k, h in HEADERS.items()}
            client.delete(f"/sandboxes/{sid}")
    return views


def expect(sdk: set[str]) -> dict[str, dict[str, tuple[str, ...]]]:
    """Callers in ``sdk`` see ``snapshotted`` everywhere, the others the seed name."""
    return {
        state: {k: ("snapshotted",) * 3 if k in sdk else (state,) * 3 for k in HEADERS}
        for state in ("paused", "stopped")
    }


def test_auto_dialect_sniffs_only_the_sdk_user_agent(server: ServerProcess) -> None:
    assert dialect_view(server) == expect({"sdk-ua", "sdk-ua-lowercase"})


@pytest.mark.parametrize("dialect", ["seed", "sdk"])
def test_forced_dialects_ignore_the_user_agent(dialect: str) -> None:
    with sandbox_server(VOIDRUN_STATUS_DIALECT=dialect) as proc:
        assert dialect_view(proc) == expect(set() if dialect == "seed" else set(HEADERS))
        with proc.client() as client:
            sid = create_sandbox(client, name="verbs")["id"]
            client.post(f"/sandboxes/{sid}/pause")
            start = client.post(f"/sandboxes/{sid}/start")
            if dialect == "sdk":  # SDK callers see "snapshotted", which start may act on
                assert start.json() == {"status": "success", "message": "Sandbox started"}
                assert client.get(f"/sandboxes/{sid}").json()["data"]["status"] == "running"
            else:
                assert assert_error(start, 400) == {
                    "error": "Invalid sandbox state",
                    "details": "sandbox is not stopped (current status: paused)",
                }
            client.delete(f"/sandboxes/{sid}")
