"""The in-process tier: the real app in this process, each sandbox's agent a host process.

No root, no image, no PostgreSQL: ``create_app`` runs on SQLite in a temp dir with the host
driver (``tests/support/hostdriver.py`` — it isolates NOTHING: commands run on this machine as
the user running pytest), and tests talk to it through a sync httpx client that streams
(``tests/support/inprocess.py``). Every test here is in the ``inprocess`` tier.

Fixtures: ``server`` (one app per module, with a bootstrap key), ``client`` (its key),
``sandbox`` (one sandbox per module), ``workdir`` (that sandbox's
home and default cwd, a host directory: tests put files below it, NEVER at fixed host paths
such as /root or /tmp/x, which here are the host's), ``make_sandbox`` (more sandboxes, deleted
after the test). An exception the app does not handle fails the test that caused it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.inprocess import InProcessServer
from tests.support.sandboxes import create_sandbox

MakeSandbox = Callable[..., str]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/inprocess/" in item.path.as_posix():
            item.add_marker(pytest.mark.inprocess)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    app = InProcessServer(tmp_path_factory.mktemp("inprocess")).start()
    try:
        yield app
    finally:
        app.stop()


@pytest.fixture(autouse=True)
def app_errors_fail_the_test(server: InProcessServer) -> Iterator[None]:
    server.take_errors()
    yield
    errors = server.take_errors()
    if errors:
        pytest.fail("the app raised (a real server would have logged it):\n" + "\n".join(errors))


@pytest.fixture
def client(server: InProcessServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def sandbox(server: InProcessServer) -> str:
    with server.client() as client:
        return str(create_sandbox(client, name="inprocess-box")["id"])


@pytest.fixture
def workdir(server: InProcessServer, sandbox: str) -> str:
    """What /root is in a real sandbox: its home and default cwd (``sandbox_workdir``)."""
    return str(server.driver.home(sandbox))


@pytest.fixture
def make_sandbox(client: httpx.Client) -> Iterator[MakeSandbox]:
    made: list[str] = []

    def make(**body: object) -> str:
        made.append(str(create_sandbox(client, **body)["id"]))
        return made[-1]

    yield make
    for sandbox_id in made:
        client.delete(f"/sandboxes/{sandbox_id}")
