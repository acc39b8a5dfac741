"""Helpers the browser tests share: a signed-in page, screenshots, reading the terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.server import ServerProcess

TIMEOUT_MS = 60_000  # a bound on waiting for sandboxes on a loaded machine, not a speed check


def open_page(browser: Any, server: ServerProcess, width: int = 1280, height: int = 860) -> Any:
    """A fresh browser context (its own cookies) on the dashboard's sign-in form."""
    context = browser.new_context(
        base_url=server.url, viewport={"width": width, "height": height}, accept_downloads=True
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto("/")
    page.get_by_label("API key").wait_for()
    return page


def sign_in(browser: Any, server: ServerProcess, key: str | None = None, **size: int) -> Any:
    """A page signed in with ``key`` (the bootstrap key by default), on the sandbox list."""
    page = open_page(browser, server, **size)
    page.get_by_label("API key").fill(key or server.api_key)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Sandboxes").wait_for()
    return page


def shot(page: Any, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"dashboard-{name}.png"), full_page=False)


def terminal_lines(page: Any) -> list[str]:
    """The terminal's rows as text (xterm's DOM renderer)."""
    rows: list[str] = page.locator(".xterm-rows > div").all_inner_texts()
    return [row.replace("\xa0", " ").rstrip() for row in rows]
