"""The served OpenAPI document is a committed artifact: this fails when they drift.

Regenerate with ``make openapi`` after an intentional API change, and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

from voidrun_server.api.app import create_app
from voidrun_server.config import Settings

COMMITTED = Path(__file__).parents[2] / "openapi.json"


def current_document(tmp_path: Path) -> dict[str, object]:
    return create_app(Settings(data_dir=tmp_path)).openapi()


def test_committed_openapi_matches_the_app(tmp_path: Path) -> None:
    committed = json.loads(COMMITTED.read_text())
    assert committed == current_document(tmp_path), "openapi.json is stale: run `make openapi`"


def test_every_api_route_is_under_api_prefix(tmp_path: Path) -> None:
    paths = current_document(tmp_path)["paths"]
    assert isinstance(paths, dict)
    assert paths and all(path.startswith("/api/") for path in paths)
