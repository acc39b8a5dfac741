"""The official SDK (``voidrun==0.4.0``) against a real server, configured only through
``VR_API_URL`` and ``VR_API_KEY`` as a user would."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.sandboxes import sandbox_server
from tests.support.server import ServerProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here talks to a sandbox server (the autouse fixture below): the sandbox tier."""
    for item in items:
        if "tests/compat/" in item.path.as_posix() and item.get_closest_marker("sandbox") is None:
            item.add_marker(pytest.mark.sandbox)


@pytest.fixture(scope="package")
def server() -> Iterator[ServerProcess]:
    with sandbox_server() as proc:
        yield proc


@pytest.fixture(autouse=True)
def sdk_environment(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_KEY", "API_URL", "VR_ORG_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VR_API_URL", server.api)
    monkeypatch.setenv("VR_API_KEY", server.api_key)
