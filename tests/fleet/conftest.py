"""One fleet per test module: PostgreSQL, two API replicas, three node daemons."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import POSTGRES_URL, _create_pg_database
from tests.support.fleet import Fleet
from tests.support.images import ensure_code_image
from tests.support.tiers import skip_if_opted_out, skip_tier

pytestmark = pytest.mark.fleet


@pytest.fixture(scope="module")
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """A module's ``NODE_ENV`` (node id -> extra settings) configures its nodes."""
    skip_if_opted_out("fleet")
    for needed in ("postgres", "sandbox"):  # opting out of what it needs opts out of it too
        skip_if_opted_out(needed)
    if os.geteuid() != 0:
        skip_tier("fleet", "node daemons run real sandboxes: root")
    if not POSTGRES_URL:
        skip_tier("fleet", "VOIDRUN_TEST_POSTGRES_URL is not set (make test starts PostgreSQL)")
    ensure_code_image()
    fleet = Fleet(_create_pg_database(), Path(tmp_path_factory.mktemp("fleet")))
    try:
        fleet.add_replica()  # first alone: it bootstraps the org and key
        for name in ("n1", "n2", "n3"):
            fleet.add_node(name, **getattr(request.module, "NODE_ENV", {}).get(name, {}))
        fleet.add_replica()
        yield fleet
    finally:
        fleet.close()
