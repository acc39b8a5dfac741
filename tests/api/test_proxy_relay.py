"""The whole preview-proxy suite (test_proxy.py) again, through the agent relay
(``services/port_relay.py``, the agent's ``port.connect``) instead of ``setns``:

* ``relay-namespace``: a namespace sandbox with ``VOIDRUN_PROXY_THROUGH_AGENT`` on, so the
  relay is judged by exactly the tests the ``setns`` path passes;
* ``gvisor``: a gvisor sandbox on a server running both isolations, whose ports only the relay
  reaches (gVisor's loopback is in its own netstack).

Same ports, same servers inside, same expectations: 502 for a port nobody listens on, 504 for a
server that never answers, limits, WebSockets, a client that stops reading.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api import test_proxy
from tests.api.test_proxy import *  # noqa: F403 - every test of the module, collected here too
from tests.support.sandboxes import sandbox_server, wait_for_isolation
from tests.support.server import ServerProcess

# ~6 minutes here: `make test-heavy`. `make test` covers the relay with tests/api/
# test_gvisor_network.py (a gvisor preview beside a namespace one, a closed port's 502),
# tests/agent/test_agent_ports.py and the hostile agent's port.connect modes.
pytestmark = [pytest.mark.sandbox, pytest.mark.heavy, pytest.mark.timeout(1200)]

MODES = {
    "relay-namespace": ({"VOIDRUN_PROXY_THROUGH_AGENT": "true"}, {}),
    "gvisor": ({"VOIDRUN_ISOLATIONS": '["namespace", "gvisor"]'}, {"isolation": "gvisor"}),
}


@pytest.fixture(scope="module", params=sorted(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(mode: str) -> Iterator[ServerProcess]:
    env = {**test_proxy.SERVER_ENV, "VOIDRUN_WARM_POOL_SIZE": "0", **MODES[mode][0]}
    with sandbox_server(**env) as proc:
        if mode == "gvisor":
            wait_for_isolation(proc, "gvisor")
        yield proc


@pytest.fixture(scope="module")
def isolation(mode: str) -> dict[str, str]:
    return MODES[mode][1]
