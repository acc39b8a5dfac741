"""``services/interpreter.py`` on real sandboxes: start on demand, state, timeouts, hostile ports.

The service has no route of its own (the E2B dispatcher and MCP's ``run_code`` call it), so
the app runs in this process (``create_app`` with the real namespace driver, as ``serve``
builds it) and the tests call the service on the app's loop, with a caller authenticated from
the bootstrap key like a request's. Sandboxes are made and inspected over HTTP.
"""

from __future__ import annotations

import gc
import os
import secrets
import shlex
import shutil
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from starlette.requests import HTTPConnection

from tests.support import hostleaks
from tests.support.images import IMAGES_DIR, ensure_code_image
from tests.support.inprocess import InProcessServer
from tests.support.sandboxes import create_sandbox
from tests.support.server import free_test_subnet
from tests.support.tiers import skip_if_opted_out, skip_tier
from voidrun_server import interpreter
from voidrun_server.api.app import create_app
from voidrun_server.api.deps import principal
from voidrun_server.api.interpreter import interpreter_service
from voidrun_server.config import Settings
from voidrun_server.errors import (
    DeadlineExceededError,
    InvalidInputError,
    NotFoundError,
    UpstreamError,
    UpstreamTimeoutError,
)
from voidrun_server.services.accounts import Principal
from voidrun_server.services.interpreter import Execution, InterpreterService

pytestmark = pytest.mark.sandbox
T = TypeVar("T")
Work = Callable[[InterpreterService, Principal], Awaitable[T]]


class RealDriverApp(InProcessServer):
    """``InProcessServer``'s portal and client, around the app as ``serve`` makes it."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.api_key = "vr_test_" + secrets.token_urlsafe(24)
        subnet = free_test_subnet()
        hostleaks.track(data_dir / "sandboxes", subnet)
        settings = {"isolations": ["namespace"], "gvisor_platform": "ptrace", **settings}
        self.settings = Settings(
            data_dir=data_dir,
            database_url=f"sqlite+aiosqlite:///{data_dir / 'voidrun.db'}",
            bootstrap_api_key=self.api_key,
            images_dir=IMAGES_DIR,
            agent_runtime_dir=Path("/var/tmp/voidrun-test-runtime"),
            sandbox_subnet=subnet,
            sandbox_disk_mb=256,
            **settings,
        )
        self.app = create_app(self.settings)
        self.state: dict[str, Any] = {}
        self.errors: list[str] = []
        self._stack = ExitStack()
        self._portal = None

    async def _register_host_image(self) -> None:
        pass  # the real driver runs the built images

    async def _destroy_all(self) -> None:
        pass  # purge_state_dir, after the app stopped

    def service(self, work: Work[T]) -> T:
        """``work(service, caller)`` on the app's loop."""

        async def run() -> T:
            key = self.api_key.encode()
            scope = {"type": "http", "app": self.app, "headers": [(b"x-api-key", key)]}
            connection = HTTPConnection({**scope, "query_string": b""})
            caller = await principal(connection, self.api_key)
            return await work(await interpreter_service(connection), caller)

        return self.call(run)


@pytest.fixture(scope="module")
def app() -> Iterator[RealDriverApp]:
    with real_driver_app() as server:
        yield server


@contextmanager
def real_driver_app(**settings: Any) -> Iterator[RealDriverApp]:
    skip_if_opted_out("sandbox")
    if os.geteuid() != 0:
        skip_tier("sandbox", "sandboxes need root")
    ensure_code_image()
    data_dir = hostleaks.new_state_dir("voidrun-interp-")
    server = RealDriverApp(data_dir, **settings)
    try:
        server.start()
        yield server
    finally:
        try:
            server.stop()
        finally:
            hostleaks.purge_state_dir(data_dir / "sandboxes")
            shutil.rmtree(data_dir, ignore_errors=True)
            # The driver keeps its sandboxes' processes (they outlive a server on purpose:
            # purged above) and netlink sockets until the garbage collector takes them; in a
            # server process that is its exit, here it must not warn later in the session.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                server.__dict__.clear()
                gc.collect()


@pytest.fixture
def client(app: RealDriverApp) -> Iterator[httpx.Client]:
    with app.client() as c:
        c.timeout = httpx.Timeout(120)
        yield c


@pytest.fixture(scope="module")
def box(app: RealDriverApp) -> str:
    with app.client() as client:
        return str(create_sandbox(client, autoSleep=False)["id"])


def run(app: RealDriverApp, sid: str, code: str, **kw: Any) -> Execution:
    return app.service(lambda s, caller: s.execute(caller, sid, code, **kw))


def main_text(execution: Execution) -> str | None:
    return next((str(r["text"]) for r in execution.results if r["is_main_result"]), None)


def interpreters(client: httpx.Client, sid: str) -> list[dict[str, Any]]:
    listed = client.get(f"/sandboxes/{sid}/commands/list")
    assert listed.status_code == 200, listed.text
    processes = listed.json()["processes"]
    return [p for p in processes if "voidrun_interpreter" in p["command"] and p["running"]]


def test_execute_starts_the_interpreter_and_state_persists(app: RealDriverApp, box: str) -> None:
    first = run(app, box, "x = 41\nprint('hi')")
    assert first.stdout == ["hi\n"] and first.error is None and first.results == []
    second = run(app, box, "x + 1")
    assert main_text(second) == "42" and second.text == "42" and first.text is None
    assert second.execution_count is not None and first.execution_count is not None
    assert second.execution_count == first.execution_count + 1


def test_a_plot_is_a_png_and_an_exception_an_error(app: RealDriverApp, box: str) -> None:
    plot = run(app, box, "import matplotlib.pyplot as plt\nplt.plot([3, 1, 2])\nplt.show()")
    assert [r for r in plot.results if r.get("png")], plot.results
    failed = run(app, box, "raise ValueError('no good')")
    assert failed.error is not None
    assert (failed.error.name, failed.error.value) == ("ValueError", "no good")
    assert "ValueError" in failed.error.traceback


def test_bash_and_contexts(app: RealDriverApp, box: str) -> None:
    run(app, box, "N=6", language="bash")
    assert run(app, box, "echo $((N * 7))", language="bash").stdout == ["42\n"]
    with pytest.raises(InvalidInputError, match="unsupported language"):
        run(app, box, "1", language="cobol")
    with pytest.raises(InvalidInputError):
        run(app, box, "1", language="python", context_id="abc")
    with pytest.raises(NotFoundError):
        run(app, box, "1", context_id="f" * 32)


def test_concurrent_calls_start_one_interpreter(app: RealDriverApp, client: httpx.Client) -> None:
    sid = str(create_sandbox(client, autoSleep=False)["id"])

    async def many(service: InterpreterService, caller: Principal) -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(service.ensure_running, caller, sid)

    app.service(many)
    assert len(interpreters(client, sid)) == 1
    app.service(many)  # running: found, not started again
    assert len(interpreters(client, sid)) == 1
    client.delete(f"/sandboxes/{sid}")


def test_two_sandboxes_do_not_share_state(
    app: RealDriverApp, client: httpx.Client, box: str
) -> None:
    other = str(create_sandbox(client, autoSleep=False)["id"])
    run(app, box, "mine = 'box'")
    assert run(app, other, "mine").error.name == "NameError"  # type: ignore[union-attr]
    assert main_text(run(app, box, "mine")) == "box"
    client.delete(f"/sandboxes/{other}")


def test_pause_keeps_the_interpreter_and_stop_restarts_it(
    app: RealDriverApp, client: httpx.Client
) -> None:
    sid = str(create_sandbox(client, autoSleep=False)["id"])
    run(app, sid, "kept = 'yes'")
    [before] = interpreters(client, sid)
    assert client.post(f"/sandboxes/{sid}/pause").status_code == 200
    assert main_text(run(app, sid, "kept")) == "yes"  # woken by the call, same kernel
    assert interpreters(client, sid) == [before]
    assert client.post(f"/sandboxes/{sid}/stop").status_code == 200
    after = run(app, sid, "kept")  # started again: a new kernel
    assert after.error is not None and after.error.name == "NameError"
    assert len(interpreters(client, sid)) == 1
    client.delete(f"/sandboxes/{sid}")


def test_a_timeout_interrupts_the_cell(app: RealDriverApp, box: str) -> None:
    with pytest.raises(DeadlineExceededError, match="timed out"):
        run(app, box, "import time\nvalue = 1\ntime.sleep(600)", timeout=2)
    assert main_text(run(app, box, "value + 1")) == "2"  # the kernel lives on, free again


# -- hostile: port 49999 is somebody else's ------------------------------------------------------

GARBAGE = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 49999)); s.listen()
while True:
    c, _ = s.accept(); c.recv(65536); c.sendall(b"\\x00\\xffnot http at all\\r\\n\\r\\n"); c.close()
"""
SILENT = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 49999)); s.listen()
held = []
while True:
    c, _ = s.accept(); held.append(c)
"""
PLAIN_HTTP = (
    "import http.server as h; h.test(h.SimpleHTTPRequestHandler, port=49999, bind='127.0.0.1')"
)
# Answers the health check like the interpreter, then garbage to /execute.
LIAR = """
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, body):
        self.send_response(200); self.send_header("X-VoidRun-Interpreter", "1")
        self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def do_GET(self): self.reply(b'"OK"')
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"])); self.reply(b"{not json\\n")
HTTPServer(("127.0.0.1", 49999), H).serve_forever()
"""


def squatted(client: httpx.Client, program: str) -> str:
    sid = str(create_sandbox(client, autoSleep=False)["id"])
    upload = client.post(
        f"/sandboxes/{sid}/files/upload", params={"path": "/root/squat.py"}, content=program
    )
    assert upload.status_code == 200, upload.text
    started = client.post(
        f"/sandboxes/{sid}/commands/run", json={"command": "exec python3 /root/squat.py"}
    )
    assert started.status_code == 200, started.text
    probe = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 49999))'"
    for _ in range(200):
        done = client.post(f"/sandboxes/{sid}/exec", json={"command": probe}).json()["data"]
        if done["exitCode"] == 0:
            return sid
    raise AssertionError("the squatter did not listen")


@pytest.mark.parametrize(
    ("program", "error", "words"),
    [
        (GARBAGE, UpstreamError, "taken"),
        (SILENT, UpstreamTimeoutError, "did not answer"),
        (PLAIN_HTTP, UpstreamError, "GET /health: 404"),
        (LIAR, UpstreamError, "answered garbage"),
    ],
    ids=["garbage", "silent", "another-http-server", "lies-about-being-it"],
)
def test_a_foreign_server_on_the_port_is_a_clear_error(
    app: RealDriverApp, client: httpx.Client, program: str, error: type[Exception], words: str
) -> None:
    sid = squatted(client, program)
    with pytest.raises(error) as caught:
        run(app, sid, "1 + 1", timeout=30)
    assert words in str(caught.value)
    assert interpreters(client, sid) == []  # nothing started over it
    client.delete(f"/sandboxes/{sid}")


def test_another_orgs_sandbox_is_not_found(app: RealDriverApp, box: str) -> None:
    stranger = Principal(key_id="", org_id="0" * 24, user_id="")
    with pytest.raises(NotFoundError):
        app.call(lambda: _as(app, stranger, box))


async def _as(app: RealDriverApp, caller: Principal, sid: str) -> None:
    connection = HTTPConnection(
        {"type": "http", "app": app.app, "headers": [], "query_string": b""}
    )
    await (await interpreter_service(connection)).execute(caller, sid, "1")


def test_an_older_interpreter_is_replaced(app: RealDriverApp, client: httpx.Client) -> None:
    """A sandbox still running another release's program (the server was upgraded)."""
    sid = str(create_sandbox(client, autoSleep=False)["id"])
    files = interpreter.program_files()
    files["wire.py"] += b"\n# an older release\n"
    for name, data in files.items():
        path = f"/opt/old/{interpreter.PACKAGE}/{name}"
        upload = client.post(f"/sandboxes/{sid}/files/upload", params={"path": path}, content=data)
        assert upload.status_code == 200, upload.text
    command = f"exec python3 -I -c {shlex.quote(interpreter.bootstrap_code('/opt/old'))}"
    old = client.post(f"/sandboxes/{sid}/commands/run", json={"command": command}).json()
    probe = "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 49999))'"
    for _ in range(600):
        if (
            client.post(f"/sandboxes/{sid}/exec", json={"command": probe}).json()["data"][
                "exitCode"
            ]
            == 0
        ):
            break
    assert main_text(run(app, sid, "6 * 7")) == "42"
    [now] = interpreters(client, sid)
    assert now["pid"] != old["pid"] and "/opt/old" not in now["command"]
    health = "curl -s -D - -o /dev/null http://127.0.0.1:49999/health"
    head = client.post(f"/sandboxes/{sid}/exec", json={"command": health}).json()["data"]["stdout"]
    assert f"X-VoidRun-Interpreter: {interpreter.version()}" in head
    client.delete(f"/sandboxes/{sid}")


@pytest.mark.parametrize(
    ("settings", "body"),
    [
        ({"proxy_through_agent": True}, {}),
        ({"isolations": ["namespace", "gvisor"]}, {"isolation": "gvisor"}),
    ],
    ids=["agent-relay", "gvisor"],
)
def test_through_the_agent_relay(settings: dict[str, Any], body: dict[str, str]) -> None:
    """Drivers the host cannot ``setns`` into reach port 49999 through the agent's relay."""
    with real_driver_app(**settings) as other, other.client() as client:
        client.timeout = httpx.Timeout(120)
        for name in settings.get("isolations", [])[1:]:  # others start in the background
            for _ in range(1200):
                state = client.get("/health").json()["isolations"][name]
                if state["available"]:
                    break
                assert state.get("reason") == "starting", f"isolation {name}: {state}"
                time.sleep(0.1)
        sid = str(create_sandbox(client, autoSleep=False, **body)["id"])
        run(other, sid, "x = 41")
        assert main_text(run(other, sid, "x + 1")) == "42"
        assert run(other, sid, "echo hi", language="bash").stdout == ["hi\n"]
        client.delete(f"/sandboxes/{sid}")


def test_big_output_arrives_whole(app: RealDriverApp, box: str) -> None:
    big = run(app, box, "print('x' * 3_000_000)\n'y' * 2_000_000")
    assert "".join(big.stdout) == "x" * 3_000_000 + "\n"
    assert big.text == "y" * 2_000_000
