"""The one middleware layer (``api/middleware.py``): request ids, CORS, limits, error mapping,
metrics — in process, through the real app, without a server or a database."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import generate_latest

from voidrun_server.api.app import create_app
from voidrun_server.api.middleware import EdgeMiddleware, new_request_id
from voidrun_server.api.preview_hosts import PreviewPathMiddleware
from voidrun_server.config import Settings
from voidrun_server.errors import ConflictError

ORIGIN = "https://console.example"


def build(tmp_path: Path, **settings: Any) -> FastAPI:
    app = create_app(Settings(data_dir=tmp_path, **settings))

    async def boom() -> None:
        raise RuntimeError("a bug")

    async def conflict() -> None:
        raise ConflictError("Already there", "pick another name")

    async def varied() -> JSONResponse:
        return JSONResponse({}, headers={"Vary": "Accept-Encoding"})

    app.add_api_route("/api/test/boom", boom)
    app.add_api_route("/api/test/conflict", conflict)
    app.add_api_route("/api/test/varied", varied)
    return app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build(tmp_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_the_stack_is_one_layer_over_the_router(tmp_path: Path) -> None:
    """Edge, then the preview path form's short cut past the router, then the router."""
    app = build(tmp_path)
    stack = app.build_middleware_stack()
    assert isinstance(stack, EdgeMiddleware) and isinstance(stack.app, PreviewPathMiddleware)
    assert stack.app.app is app.router


async def test_plain_response_headers_in_order(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/version")
    assert response.status_code == 200
    names = [name for name, _ in response.headers.raw]
    assert names == [b"content-length", b"content-type", b"vary", b"x-request-id"]
    assert response.headers["vary"] == "Origin"  # as Starlette's CORS always added it
    assert "access-control-allow-origin" not in response.headers


async def test_request_ids_are_new_or_echoed(client: httpx.AsyncClient) -> None:
    first, second = await client.get("/api/version"), await client.get("/api/version")
    for response in (first, second):
        assert re.fullmatch(
            r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", response.headers["x-request-id"]
        )
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    echoed = await client.get("/api/version", headers={"X-Request-Id": "trace-123"})
    assert echoed.headers["x-request-id"] == "trace-123"
    unsafe = await client.get("/api/version", headers={"X-Request-Id": "a b"})
    assert unsafe.headers["x-request-id"] != "a b" and len(unsafe.headers["x-request-id"]) == 32
    assert len({new_request_id() for _ in range(1000)}) == 1000


async def test_cors_simple_request_with_origin(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/version", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["vary"] == "Origin"
    assert response.headers["x-request-id"]
    denied = await client.get("/api/users/me", headers={"Origin": ORIGIN})
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == "*"


async def test_cors_preflight_is_answered_here(client: httpx.AsyncClient) -> None:
    preflight = await client.options(
        "/api/sandboxes",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key, Content-Type",
        },
    )
    assert (preflight.status_code, preflight.text) == (200, "OK")
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert preflight.headers["access-control-max-age"] == "600"
    assert preflight.headers["x-request-id"]
    refused = await client.options(
        "/api/sandboxes",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "TRACE"},
    )
    assert (refused.status_code, refused.text) == (400, "Disallowed CORS method")
    # OPTIONS without Origin is no preflight: it reaches the router (405, our JSON body).
    plain = await client.options("/api/sandboxes")
    assert plain.status_code == 405 and plain.json() == {"error": "Method Not Allowed"}


async def test_restricted_origins(tmp_path: Path) -> None:
    app = build(tmp_path, cors_origins=[ORIGIN])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        allowed = await c.get("/api/version", headers={"Origin": ORIGIN})
        assert allowed.headers["access-control-allow-origin"] == ORIGIN
        assert allowed.headers["vary"] == "Origin"
        stranger = await c.get("/api/version", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers


async def test_an_existing_vary_is_merged(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/test/varied")
    assert response.headers.get_list("vary") == ["Accept-Encoding, Origin"]


async def test_errors_come_from_the_one_table(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/nope")
    assert (missing.status_code, missing.json()) == (404, {"error": "Not Found"})
    assert missing.headers["x-request-id"] and missing.headers["vary"] == "Origin"
    conflict = await client.get("/api/test/conflict")
    assert conflict.status_code == 409
    assert conflict.json() == {"error": "Already there", "details": "pick another name"}


async def test_an_unexpected_error_is_a_logged_json_500(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        response = await client.get("/api/test/boom", headers={"Origin": ORIGIN})
    assert (response.status_code, response.json()) == (500, {"error": "Internal server error"})
    assert response.headers["x-request-id"]
    assert response.headers["access-control-allow-origin"] == "*"
    assert any("a bug" in str(r.exc_info) for r in caplog.records if r.exc_info)


async def test_limits_answer_before_the_route(client: httpx.AsyncClient) -> None:
    too_long = await client.get("/api/version", params={"q": "x" * 20000})
    assert too_long.status_code == 414
    assert too_long.json() == {"error": "Request URI too long", "details": "shorten the URL"}
    assert too_long.headers["x-request-id"]
    big = b"{" + b" " * (2 * 1024 * 1024) + b"}"
    too_large = await client.post("/api/sandboxes", content=big)
    assert too_large.status_code == 413
    assert too_large.json()["error"] == "Request body too large"


async def test_metrics_per_route_template(tmp_path: Path) -> None:
    app = build(tmp_path)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        for _ in range(3):
            await c.get("/api/version")
        await c.get("/api/nope")
        await c.get("/api/test/boom")
    text = generate_latest(app.state.ctx.registry).decode()
    assert 'voidrun_http_requests_total{method="GET",route="/api/version",status="200"} 3.0' in text
    assert 'voidrun_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert 'route="/api/test/boom",status="500"} 1.0' in text
    assert (
        'voidrun_http_request_duration_seconds_count{method="GET",route="/api/version"} 3.0' in text
    )
