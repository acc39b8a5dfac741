"""Property-based fuzzing of the served OpenAPI document with schemathesis.

Every generated request must get a non-5xx answer whose body matches the documented schema.
``make test`` runs a small fixed budget; ``make fuzz`` (FUZZ_EXAMPLES=…) a larger one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.sandboxes import sandbox_server
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(1800)]
EXAMPLES = os.environ.get("VOIDRUN_FUZZ_EXAMPLES", "8")
SEED = os.environ.get("VOIDRUN_FUZZ_SEED", "20261128")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with sandbox_server(VOIDRUN_SANDBOX_DISK_MB="64") as proc:
        yield proc


def test_no_server_errors_and_schema_conformance(server: ServerProcess, tmp_path: Path) -> None:
    binary = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(binary),
            "run",
            f"{server.api}/openapi.json",
            "--header",
            f"X-API-Key: {server.api_key}",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--phases",
            "coverage,fuzzing",
            "--max-examples",
            EXAMPLES,
            "--seed",
            SEED,
            "--request-timeout",
            "60",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=1700,
        cwd=tmp_path,
    )
    summary = result.stdout[-6000:]
    assert result.returncode == 0, summary
    assert " passed" in summary and "failed" not in summary.split("Test cases:")[-1], summary
