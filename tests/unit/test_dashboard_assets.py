"""What ``/`` and ``/ui/...`` serve (api/dashboard.py): the page, its modules, an allow-list of
npm assets, and an install hint instead of a blank page when the assets are missing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from voidrun_server.api import app as app_module
from voidrun_server.api.app import create_app
from voidrun_server.api.dashboard import VENDOR
from voidrun_server.api.deps import AppContext
from voidrun_server.config import Settings
from voidrun_server.store import db


def client(tmp_path: Path, dashboard: Path) -> httpx.AsyncClient:
    settings = Settings(data_dir=tmp_path / "data", dashboard_dir=dashboard)
    app = create_app(settings)  # no lifespan: these routes need neither database nor driver
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


def install(root: Path) -> None:
    (root / "ui").mkdir(parents=True)
    (root / "ui" / "index.html").write_text("<!doctype html><title>VoidRun dashboard</title>")
    (root / "ui" / "app.js").write_text("export {};")
    for relative in VENDOR.values():
        path = root / "node_modules" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("/* vendor */")
    (root / "node_modules" / "secret.js").write_text("not served")
    (root / "outside.js").write_text("not served")


async def test_missing_assets_answer_how_to_install_them(tmp_path: Path) -> None:
    async with client(tmp_path, tmp_path / "nothing") as http:
        response = await http.get("/")
    assert response.status_code == 503
    assert "npm ci" in response.text and "make install" in response.text
    assert "xterm.mjs" in response.text


async def test_the_page_its_modules_and_only_listed_vendor_files(tmp_path: Path) -> None:
    root = tmp_path / "dashboard"
    install(root)
    async with client(tmp_path, root) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "VoidRun dashboard" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        module = await http.get("/ui/app.js")
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")
        for name in VENDOR:
            assert (await http.get(f"/ui/vendor/{name}")).status_code == 200, name
        for path in (
            "/ui/vendor/secret.js",
            "/ui/vendor/..%2Fsecret.js",
            "/ui/..%2Foutside.js",
            "/ui/%2E%2E/outside.js",
            "/ui/missing.js",
            "/ui/index.txt",
        ):
            response = await http.get(path)
            assert response.status_code == 404, path
            assert response.json()["error"] == "no such dashboard asset"


async def test_the_dashboard_can_be_turned_off(tmp_path: Path) -> None:
    root = tmp_path / "dashboard"
    install(root)
    settings = Settings(data_dir=tmp_path / "data", dashboard_dir=root, dashboard_enabled=False)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/")).status_code == 404
        assert (await http.get("/ui/app.js")).status_code == 404


async def test_the_first_start_prints_the_dashboard_url_next_to_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=8123)
    settings.data_dir.mkdir()
    engine = db.create_engine(settings.resolved_database_url)
    try:
        await db.migrate(engine)
        ctx = AppContext(settings, engine, db.session_factory(engine), CollectorRegistry())
        await app_module._bootstrap(ctx)
    finally:
        await engine.dispose()
    printed = capsys.readouterr().out
    key = settings.bootstrap_key_file.read_text().strip()
    assert key in printed
    assert "Dashboard: http://127.0.0.1:8123/ (sign in with this key)" in printed
