"""The dashboard's sandbox list with 1,000 sandboxes: page weight and time to interactive in
Debian's headless chromium (Playwright), beside a floor measured in the same run.

Usage: .venv/bin/python bench/dashboard.py [-n 1000] [--runs 15]   (root; the code image and
``make install-test`` for Playwright, chromium and the npm assets)

The rows are made cheaply: N ``stopped`` sandboxes written straight into the server's database
(no runtime behind them; the list reads only rows). Each run opens a fresh page on
``/#/sandboxes`` with a signed-in session cookie and stops the clock when the first page of rows
is in the table and its first link can take focus (the page is usable), measured from the
navigation's start (``performance.now()``). The floor is a static page with the same rendered
markup and stylesheet, answered from memory (no server, no scripts), to the same condition.
Page weight is the bytes the browser fetched (document, modules, styles, API responses).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
from datetime import timedelta
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from _harness import server
from voidrun_server import ids
from voidrun_server.store import db
from voidrun_server.store.tables import Sandbox
from voidrun_server.store.types import utcnow

READY = """() => {
    const rows = document.querySelectorAll('table.sandboxes tbody tr');
    const link = document.querySelector('table.sandboxes tbody a');
    if (rows.length < 50 || !link) return false;
    link.focus();
    return document.activeElement === link ? performance.now() : false;
}"""
WEIGHT = """() => performance.getEntriesByType('navigation').concat(
    performance.getEntriesByType('resource')).reduce((n, e) => n + (e.transferSize || 0), 0)"""


async def add_rows(database: Path, n: int, org_id: str, user_id: str) -> None:
    engine = db.create_engine(f"sqlite+aiosqlite:///{database}")
    try:
        async with db.transaction(db.session_factory(engine)) as session:
            now = utcnow()
            for i in range(n):
                session.add(
                    Sandbox(
                        id=ids.new_id(), org_id=org_id, created_by=user_id, name=f"row-{i:04d}",
                        image="code", cpu=1, mem=1024, disk_mb=1024, status="stopped",
                        labels={"bench": "dashboard", "team": f"t{i % 7}"}, auto_sleep=False,
                        created_at=now - timedelta(seconds=n - i), stopped_at=now,
                    )
                )  # fmt: skip
    finally:
        await engine.dispose()


def summary(label: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"{label:<44} p50 {statistics.median(ordered):7.1f} ms   p95 {p95:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="voidrun-bench-dash-", dir="/var/tmp"))
    data_dir.chmod(0o711)
    try:
        with server(VOIDRUN_DATA_DIR=str(data_dir)) as srv:
            base = srv.api.removesuffix("/api")
            with srv.client() as client:
                me = client.get("/users/me").json()
                org = me["orgs"][0]["id"]
                asyncio.run(add_rows(data_dir / "voidrun.db", args.n, org, me["id"]))
                total = client.get("/sandboxes").json()["meta"]["total"]
                api_ms = []
                for _ in range(args.runs):
                    r = client.get("/sandboxes", params={"limit": 50})
                    api_ms.append(r.elapsed.total_seconds() * 1000)
            session = httpx.post(f"{srv.api}/auth/session", json={"apiKey": srv.key})
            cookie = session.cookies["voidrun_session"]
            measure(base, cookie, total, api_ms, args.runs)
            with srv.client() as client:  # the rows have no runtime: only their rows go
                for _ in range(args.n // 100 + 1):
                    for box in client.get("/sandboxes", params={"limit": 100}).json()["data"]:
                        client.delete(f"/sandboxes/{box['id']}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def measure(base: str, cookie: str, total: int, api_ms: list[float], runs: int) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium") or "chromium", headless=True,
            args=["--no-sandbox"],
        )  # fmt: skip
        context = browser.new_context(base_url=base)
        host = base.split("://", 1)[1].split(":")[0]
        context.add_cookies([{"name": "voidrun_session", "value": cookie, "domain": host,
                              "path": "/", "httpOnly": True, "sameSite": "Strict"}])  # fmt: skip
        page = context.new_page()
        tti, weights = [], []
        for _ in range(runs + 2):  # two warm-ups: the first loads of a module cache
            page.goto("about:blank")
            page.goto("/#/sandboxes")
            tti.append(page.wait_for_function(READY, timeout=60_000).json_value())
            weights.append(page.evaluate(WEIGHT))
        cold = weights[0]
        tti, weights = tti[2:], weights[2:]
        markup = page.evaluate("document.documentElement.outerHTML")
        css = page.evaluate("fetch('/ui/app.css').then(r => r.text())")
        floor_page = markup.replace(
            '<link rel="stylesheet" href="/ui/app.css">', f"<style>{css}</style>"
        )
        floor_page = floor_page.replace('<script type="module" src="/ui/app.js"></script>', "")
        page.route(f"{base}/floor", lambda route: route.fulfill(
            status=200, content_type="text/html", body=floor_page))  # fmt: skip
        floor = []
        for _ in range(runs + 2):
            page.goto("about:blank")
            page.goto("/floor")
            floor.append(page.wait_for_function(READY, timeout=60_000).json_value())
        floor = floor[2:]
        browser.close()
    print(f"sandboxes in the org: {total}; list page: 50 rows; {runs} runs each")
    print(summary("GET /api/sandboxes?limit=50 (httpx)", api_ms))
    print(summary("dashboard list: time to interactive", tti))
    print(summary("floor: static page, same markup, no scripts", floor))
    print(f"page weight, first visit (bytes fetched): {cold:,.0f}")
    warm = statistics.median(weights)
    print(f"page weight, later visits (304s for unchanged files): {warm:,.0f}")
    print(f"floor page size (markup + inline CSS): {len(floor_page.encode()):,}")


if __name__ == "__main__":
    main()
