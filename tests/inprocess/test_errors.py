"""Error envelopes over the whole route table, in process: every route refuses a missing or
wrong key with 401, every route naming a sandbox answers 404 for one that does not exist, and
malformed requests are 4xx — each with the ``{"error", "details"?}`` body (``assert_error``)."""

from __future__ import annotations

import httpx
import pytest

from tests.security.test_tenant_isolation import BODY, MISSING, QUERY, fill
from tests.support.http import assert_error
from tests.support.inprocess import InProcessServer
from tests.support.routes import http_routes

# /api/auth/session: the dashboard's sign-in, the key in its body (tests/api/test_insights.py)
PUBLIC = {"/api/version", "/api/health", "/api/openapi.json", "/api/docs", "/api/auth/session"}


def api_routes(server: InProcessServer) -> list[tuple[str, str]]:
    routes = http_routes(server.app.routes)
    return [(m, p) for m, p in routes if p.startswith("/api") and p not in PUBLIC]


@pytest.mark.parametrize("key", ["", "vr_" + "x" * 43, "not-even-a-key"])
def test_every_route_refuses_a_missing_or_wrong_key(server: InProcessServer, key: str) -> None:
    routes = api_routes(server)
    assert len(routes) > 20, "route table looks empty"
    with server.client() as client:
        headers = {"X-API-Key": key} if key else {}
        if not key:
            client.headers.pop("X-API-Key")
        for method, template in routes:
            response = client.request(
                method, fill(template, {}), params=QUERY, json=BODY, headers=headers
            )
            assert response.status_code == 401, f"{method} {template}: {response.text}"
            assert_error(response, 401)


@pytest.mark.parametrize("sandbox_id", [MISSING, "not-an-id", "f" * 25])
def test_every_sandbox_route_answers_404_for_an_unknown_sandbox(
    client: httpx.Client, server: InProcessServer, sandbox_id: str
) -> None:
    routes = [(m, p) for m, p in api_routes(server) if "{sandbox_id}" in p]
    assert len(routes) > 20, "route table looks empty"
    for method, template in routes:
        path = fill(template, {"sandbox_id": sandbox_id})
        body = {"autoSleep": False} if method == "PATCH" else BODY  # PATCH is strict (400 first)
        response = client.request(method, path, params=QUERY, json=body)
        assert response.status_code == 404, f"{method} {template}: {response.text}"
        assert_error(response, 404)


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert_error(client.get("/no-such-route"), 404)
    assert_error(client.put("/sandboxes"), 405)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{", "application/json"),
        (b"[]", "application/json"),
        (b'{"name": 5}', "application/json"),
        (b'{"name": "ok", "cpu": "lots"}', "application/json"),
        (b"name=ok", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_create_bodies_are_400(
    client: httpx.Client, content: bytes, content_type: str
) -> None:
    response = client.post("/sandboxes", content=content, headers={"Content-Type": content_type})
    assert_error(response, 400)


def test_oversized_bodies_are_413(client: httpx.Client) -> None:
    body = b'{"name": "' + b"x" * 3_000_000 + b'"}'
    response = client.post("/sandboxes", content=body, headers={"Content-Type": "application/json"})
    assert_error(response, 413)
