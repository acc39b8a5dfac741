"""``/api/docs`` works offline: the page names no other host, and every asset it loads is
served by this server (``api/docs_ui.py``), against a real server process."""

from __future__ import annotations

import re

import httpx

from tests.support.server import ServerProcess

ATTRIBUTE = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
SPEC_URL = re.compile(r"""\burl:\s*'([^']+)'""")


def test_docs_page_loads_only_from_this_server(server: ServerProcess) -> None:
    page = httpx.get(f"{server.url}/api/docs", timeout=30)
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    # no absolute or scheme-relative URL anywhere in the page (FastAPI's default names a CDN)
    assert re.search(r"(?:[a-z]+:)?//", html) is None, html
    # Swagger UI must not call its public spec validator either
    assert '"validatorUrl": null' in html
    assets = ATTRIBUTE.findall(html)
    assert {a.rsplit("/", 1)[-1] for a in assets} == {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "favicon.png",
    }
    kinds = {"css": "text/css", "js": "text/javascript", "png": "image/png"}
    for asset in assets:
        assert asset.startswith("/"), asset
        response = httpx.get(server.url + asset, timeout=30)
        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(kinds[asset.rsplit(".", 1)[-1]])
        assert len(response.content) > 1000, asset
    bundle = httpx.get(server.url + next(a for a in assets if a.endswith(".js")), timeout=30)
    assert "SwaggerUIBundle" in bundle.text
    (spec_url,) = SPEC_URL.findall(html)
    spec = httpx.get(server.url + spec_url, timeout=30)
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.")


def test_docs_static_serves_only_its_own_files(server: ServerProcess) -> None:
    # (httpx resolves a literal ../ itself: the escaped forms reach the server as sent)
    for path in ("nope.js", "..%2f..%2f..%2fpyproject.toml", "%2e%2e/__init__.py", "..%2fcore.py"):
        response = httpx.get(f"{server.url}/api/docs/static/{path}", timeout=30)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["error"], path
    redirect = httpx.get(f"{server.url}/docs/oauth2-redirect", timeout=30)
    assert redirect.status_code == 200 and "oauth2" in redirect.text
