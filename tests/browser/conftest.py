"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright for
Python through ``executable_path``; Playwright never downloads a browser here) against a real
server with real sandboxes. One server and one browser per module.

Screenshots: every page a test visits is captured by :func:`shot`; with
``VOIDRUN_SCREENSHOTS=1`` (``make screenshots``) into ``docs/img/``, else into a temp dir.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandboxes import sandbox_server
from tests.support.server import ServerProcess
from tests.support.tiers import skip_if_opted_out, skip_tier

REPO = Path(__file__).resolve().parents[2]
DOCS_IMG = REPO / "docs" / "img"
VENDOR = REPO / "dashboard" / "node_modules" / "@xterm" / "xterm" / "lib" / "xterm.mjs"
TIMEOUT_MS = 60_000  # sandbox operations on a loaded machine; a wait, not a speed check


def chromium_path() -> str:
    return shutil.which("chromium") or ""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    skip_if_opted_out("browser")
    if not VENDOR.is_file():
        skip_tier("browser", f"the dashboard's npm assets are missing ({VENDOR})")
    with sandbox_server() as proc:
        yield proc


@pytest.fixture(scope="module")
def browser(server: ServerProcess) -> Iterator[object]:
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        skip_tier("browser", "Playwright for Python is not installed")
    if not chromium_path():
        skip_tier("browser", "no chromium on PATH (apt-get install chromium)")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("VOIDRUN_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        return DOCS_IMG
    return tmp_path_factory.mktemp("screenshots")
