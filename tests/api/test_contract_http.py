"""HTTP-level contract without sandboxes: CORS (§1.1) and ``/api/health`` when the database is
down (§C.8)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import POSTGRES_URL, database_url
from tests.support.server import ServerProcess

ORIGIN = "https://console.example"
ALLOWED_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
# Starlette adds the CORS-safelisted request headers to the configured ones.
ALLOWED_HEADERS = (
    "Accept, Accept-Language, Authorization, Content-Language, Content-Type, X-API-Key, X-Org-ID"
)


def serve(tmp: Path, **env: str) -> ServerProcess:
    return ServerProcess(
        data_dir=tmp, database_url=f"sqlite+aiosqlite:///{tmp / 'voidrun.db'}", extra_env=env
    ).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = serve(tmp_path_factory.mktemp("cors"))
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    origins = json.dumps([ORIGIN, "http://localhost:3000"])
    proc = serve(tmp_path_factory.mktemp("cors-restricted"), VOIDRUN_CORS_ORIGINS=origins)
    try:
        yield proc
    finally:
        proc.stop()


def preflight(
    server: ServerProcess, origin: str, method: str = "POST", headers: str = "X-API-Key"
) -> httpx.Response:
    return httpx.options(
        f"{server.api}/sandboxes",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


def cors(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("access-control-")}


# -- §1.1 CORS -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_preflight_allows_every_origin_by_default(server: ServerProcess, method: str) -> None:
    response = preflight(server, ORIGIN, method, "X-API-Key, Content-Type, Authorization")
    assert response.status_code == 200 and response.text == "OK"  # no key needed
    assert cors(response) == {
        "access-control-allow-origin": "*",
        "access-control-allow-methods": ALLOWED_METHODS,
        "access-control-allow-headers": ALLOWED_HEADERS,
        "access-control-max-age": "600",
    }


def test_preflight_refuses_other_methods_and_headers(server: ServerProcess) -> None:
    for method, headers, why in [
        ("TRACE", "X-API-Key", "method"),
        ("POST", "X-Evil", "headers"),
        ("GET", "Cookie, X-API-Key", "headers"),
        ("CONNECT", "X-Evil", "method, headers"),
    ]:
        response = preflight(server, ORIGIN, method, headers)
        assert (response.status_code, response.text) == (400, f"Disallowed CORS {why}")
    assert preflight(server, ORIGIN, "POST", "x-org-id").status_code == 200  # case-insensitive


def test_simple_requests_get_allow_origin_even_on_errors(server: ServerProcess) -> None:
    headers = {"Origin": ORIGIN, "X-API-Key": server.api_key}
    me = httpx.get(f"{server.api}/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["name"] == "admin"
    assert cors(me) == {"access-control-allow-origin": "*"}
    denied = httpx.get(f"{server.api}/users/me", headers={"Origin": ORIGIN})
    assert denied.status_code == 401
    assert denied.json() == {"error": "authentication required (X-API-Key or Bearer token)"}
    assert cors(denied) == {"access-control-allow-origin": "*"}
    plain = httpx.get(f"{server.api}/version")  # no Origin: no CORS headers
    assert cors(plain) == {}


def test_cors_origins_setting_restricts_origins(restricted: ServerProcess) -> None:
    for origin in (ORIGIN, "http://localhost:3000"):
        response = preflight(restricted, origin)
        assert response.status_code == 200
        assert cors(response) == {
            "access-control-allow-origin": origin,
            "access-control-allow-methods": ALLOWED_METHODS,
            "access-control-allow-headers": ALLOWED_HEADERS,
            "access-control-max-age": "600",
        }
        simple = httpx.get(f"{restricted.api}/version", headers={"Origin": origin})
        assert cors(simple) == {"access-control-allow-origin": origin}
        assert "Origin" in simple.headers["vary"]
    for stranger in ("https://evil.example", "https://console.example.evil", "null"):
        refused = preflight(restricted, stranger)
        assert (refused.status_code, refused.text) == (400, "Disallowed CORS origin")
        assert "access-control-allow-origin" not in refused.headers
        simple = httpx.get(f"{restricted.api}/version", headers={"Origin": stranger})
        assert simple.status_code == 200 and cors(simple) == {}


# -- §C.8 health -----------------------------------------------------------------------------


async def _admin(*statements: str) -> None:
    import asyncpg  # type: ignore[import-untyped]

    conn = await asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.postgres
def test_health_is_503_while_the_database_refuses_connections(tmp_path: Path) -> None:
    url = database_url("postgres", tmp_path)
    name = url.rsplit("/", 1)[1]
    proc = ServerProcess(data_dir=tmp_path, database_url=url).start()
    try:
        ok = httpx.get(f"{proc.api}/health")
        assert (ok.status_code, ok.json()["status"], ok.json()["database"]) == (200, "ok", "ok")
        # A real outage: no new connections, and every open one (the server's pool) is cut.
        asyncio.run(
            _admin(
                f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false',
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'",
            )
        )
        for _ in range(2):  # every call, not just the first after the cut
            down = httpx.get(f"{proc.api}/health")
            assert down.status_code == 503
            assert down.headers["content-type"] == "application/json"
            assert down.json() == {"status": "unavailable", "database": "error"}
        assert httpx.get(f"{proc.api}/version").status_code == 200  # needs no database
        asyncio.run(_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        back = httpx.get(f"{proc.api}/health")
        assert (back.status_code, back.json()["status"], back.json()["database"]) == (
            200,
            "ok",
            "ok",
        )
        me = httpx.get(f"{proc.api}/users/me", headers={"X-API-Key": proc.api_key})
        assert me.status_code == 200
    finally:
        proc.stop()
        asyncio.run(_admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
