"""The E2B SDK (``e2b==2.63.0``, unchanged) against a real server, configured only through
``E2B_API_URL``, ``E2B_SANDBOX_URL`` and ``E2B_API_KEY`` as a user would (docs/e2b.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.sandboxes import sandbox_server
from tests.support.server import ServerProcess

UNIT_FILES = ("test_connect_framing.py", "test_e2b_units.py")  # no server, no sandbox


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here talks to a sandbox server: the sandbox tier (the unit files excepted)."""
    for item in items:
        path = item.path.as_posix()
        if "tests/compat_e2b/" in path and not path.endswith(UNIT_FILES):
            if item.get_closest_marker("sandbox") is None:
                item.add_marker(pytest.mark.sandbox)


@pytest.fixture(scope="package")
def server() -> Iterator[ServerProcess]:
    # a quick reconcile loop: sandboxes end at their E2B timeout within a second of it
    with sandbox_server(VOIDRUN_AUTO_SLEEP_CHECK_INTERVAL_SECONDS="0.5") as proc:
        yield proc


@pytest.fixture
def e2b_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> ServerProcess:
    for name in ("E2B_DOMAIN", "E2B_DEBUG", "E2B_ACCESS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("E2B_API_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_SANDBOX_URL", f"{server.url}/e2b")
    monkeypatch.setenv("E2B_API_KEY", server.api_key)
    return server
