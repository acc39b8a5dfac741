"""The official SDK's whole flow on the stronger isolations: the same tests as the namespace
default's (test_sdk_sandboxes, test_sdk_dataplane), against a server whose default isolation
is gvisor, then one whose default is microvm. The SDK has no ``isolation`` argument: a server
chooses it for SDK users with ``VOIDRUN_DRIVER`` (docs/isolation.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compat.test_sdk_dataplane import (  # noqa: F401 - collected here again
    box,
    test_background_commands,
    test_files,
    test_pty,
    test_shell_sessions,
    test_watch,
)
from tests.compat.test_sdk_sandboxes import (  # noqa: F401 - collected here again
    test_create_with_defaults_then_get_and_remove,
    test_exec_and_streams,
    test_run_code,
    test_update_and_lifecycle,
)
from tests.drivers.microvm_harness import TEST_CACHE as MICROVM_CACHE
from tests.support.sandboxes import sandbox_server, wait_for_isolation
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


@pytest.fixture(scope="module", params=["gvisor", "microvm"])
def server(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    isolation = request.param
    env = {
        "VOIDRUN_DRIVER": isolation,
        "VOIDRUN_ISOLATIONS": f'["{isolation}"]',
        "VOIDRUN_MICROVM_CACHE_DIR": str(MICROVM_CACHE),  # kernel, disks, templates: shared
    }
    with sandbox_server(**env) as proc:
        wait_for_isolation(proc, isolation, seconds=300)
        yield proc
