"""The real app (``create_app``) in this process, with the host driver, behind a sync httpx client.

``InProcessServer`` is a stand-in for ``ServerProcess`` in route tests: the same ``client()``,
``api_key`` and ``new_tenant()``, but no ``voidrun-server serve`` process, no root, no image,
no PostgreSQL. Sandboxes are real agents on the host (``tests/support/hostdriver.py``, which
isolates nothing).

The app runs on an anyio event loop in a thread of its own (a blocking portal) with its ASGI
lifespan, as uvicorn would run it. Requests reach it through :class:`PortalTransport`, a sync
httpx transport that *streams*: ``httpx.ASGITransport`` collects the whole response before
returning it, so a test could never read the first SSE event of a command that is still
running, nor hang up mid-stream. Here the response is returned at ``http.response.start``, its
body arrives chunk by chunk as the app sends it, and closing the response tells the app the
client went away (``http.disconnect``), like uvicorn's protocol does (ASGI spec 2.3: ``send``
after a disconnect is dropped).
"""

from __future__ import annotations

import queue
import secrets
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread
import httpx
from fastapi import FastAPI

from tests.agent.agent_helpers import copy_agent
from tests.support.hostdriver import HOST_ROOTFS, HostDriver
from voidrun_server import ids
from voidrun_server.api.app import create_app
from voidrun_server.config import Settings
from voidrun_server.services import accounts
from voidrun_server.store.db import transaction
from voidrun_server.store.tables import Image

T = TypeVar("T")
HOST_IMAGE = "host"
BASE_URL = "http://inprocess.test"
Message = dict[str, Any]
_END = object()


class _Exchange:
    """One request/response between the test thread and the app's loop."""

    def __init__(self, request: httpx.Request, portal: anyio.from_thread.BlockingPortal) -> None:
        self.request = request
        self.portal = portal
        self.to_client: queue.SimpleQueue[Message | BaseException | object] = queue.SimpleQueue()
        self.gone = False  # the client closed the response (read and set in the loop only)
        self.wake: anyio.Event | None = None

    # -- in the app's loop ----------------------------------------------------------------------

    async def serve(self, app: FastAPI, state: dict[str, Any], errors: list[str]) -> None:
        request = self.request
        self.wake = anyio.Event()
        scope: Message = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": request.method,
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "root_path": "",
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 40000),
            "state": dict(state),
        }
        body = iter(request.stream)  # type: ignore[call-overload]
        more = True
        started = False

        async def receive() -> Message:
            nonlocal more
            if more:
                chunk = await anyio.to_thread.run_sync(next, body, _END)
                more = chunk is not _END
                return {"type": "http.request", "body": chunk if more else b"", "more_body": more}
            while not self.gone:
                assert self.wake is not None
                await self.wake.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal started
            if self.gone:
                return
            started = started or message["type"] == "http.response.start"
            self.to_client.put(message)

        try:
            await app(scope, receive, send)
        except Exception as exc:  # what uvicorn would log; the test fails on it (see errors)
            errors.append("".join(traceback.format_exception(exc)))
            if not started:
                self.to_client.put({"type": "http.response.start", "status": 500, "headers": []})
            self.to_client.put({"type": "http.response.body", "body": b"Internal Server Error"})
        finally:
            self.to_client.put(_END)

    def _hang_up(self) -> None:
        self.gone = True
        if self.wake is not None:
            self.wake.set()

    # -- in the test's thread ---------------------------------------------------------------------

    def next_message(self) -> Message | None:
        timeout = self.request.extensions.get("timeout", {}).get("read")
        try:
            item = self.to_client.get(timeout=timeout)
        except queue.Empty:
            raise httpx.ReadTimeout("no response from the app", request=self.request) from None
        if item is _END:
            return None
        assert isinstance(item, dict)
        return item

    def hang_up(self) -> None:
        try:
            self.portal.call(self._hang_up)
        except RuntimeError:  # the portal is already closed: the app is gone anyway
            pass


class _Body(httpx.SyncByteStream):
    def __init__(self, exchange: _Exchange, head: bool) -> None:
        self.exchange = exchange
        self.head = head

    def __iter__(self) -> Iterator[bytes]:
        while (message := self.exchange.next_message()) is not None:
            if message["type"] != "http.response.body":
                continue
            if message.get("body") and not self.head:
                yield bytes(message["body"])
            if not message.get("more_body", False):
                return

    def close(self) -> None:
        self.exchange.hang_up()


class PortalTransport(httpx.BaseTransport):
    """Hands each request to the app on the portal's loop; streams the response back."""

    def __init__(self, server: InProcessServer) -> None:
        self.server = server

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        exchange = _Exchange(request, self.server.portal)
        self.server.portal.start_task_soon(
            exchange.serve, self.server.app, self.server.state, self.server.errors
        )
        message = exchange.next_message()
        if message is None or message["type"] != "http.response.start":
            raise httpx.RemoteProtocolError("the app ended without a response", request=request)
        return httpx.Response(
            message["status"],
            headers=message.get("headers", []),
            stream=_Body(exchange, request.method == "HEAD"),
            extensions={"http_version": b"HTTP/1.1"},
        )


class InProcessServer:
    """``create_app`` with the host driver, SQLite in ``data_dir``, and a bootstrap key."""

    def __init__(self, data_dir: Path, **settings: Any) -> None:
        self.data_dir = data_dir
        self.api_key = "vr_test_" + secrets.token_urlsafe(24)
        self.settings = Settings(
            data_dir=data_dir,
            database_url=f"sqlite+aiosqlite:///{data_dir / 'voidrun.db'}",
            bootstrap_api_key=self.api_key,
            default_image=HOST_IMAGE,
            sandbox_disk_mb=256,
            **settings,
        )
        self.driver = HostDriver(
            data_dir / "sandboxes", agent_mount=copy_agent(data_dir / "agent-mount")
        )
        self.app = create_app(self.settings, driver=self.driver)
        self.state: dict[str, Any] = {}
        self.errors: list[str] = []  # unhandled app exceptions, as tracebacks
        self._stack = ExitStack()
        self._portal: anyio.from_thread.BlockingPortal | None = None

    @property
    def portal(self) -> anyio.from_thread.BlockingPortal:
        assert self._portal is not None, "the server is not started"
        return self._portal

    def start(self) -> InProcessServer:
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        try:
            self._shutdown = self.portal.call(anyio.Event)
            self._lifespan = self.portal.start_task(self._run_lifespan)[0]
            self.call(self._register_host_image)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Shut the app down (its lifespan), then end every agent and the loop."""
        if self._portal is None:
            return
        try:
            if hasattr(self, "_lifespan"):
                self.portal.call(self._shutdown.set)
                self._lifespan.result(timeout=60)
            self.call(self._destroy_all)
        finally:
            try:  # requests still open (a test that never closed a response) end here
                self.portal.call(self.portal.stop, True)
            except RuntimeError:
                pass
            self._stack.close()
            self._portal = None

    def call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``func(*args)`` on the app's loop and return its result."""
        return self.portal.call(func, *args)

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            transport=PortalTransport(self),
            base_url=f"{BASE_URL}/api",
            headers={"X-API-Key": key or self.api_key},
            timeout=30,
        )

    def new_tenant(self, org: str) -> str:
        """An org with an owner and an API key (what the CLI's ``orgs create``, ``users
        create`` and ``keys create`` do, through the same service calls); the plain key."""

        async def create() -> str:
            async with transaction(self.app.state.ctx.sessions) as session:
                the_org = await accounts.create_org(session, org)
                await accounts.create_user(session, the_org, f"owner@{org}.example")
                owner = await accounts.key_owner(session, the_org, None)
                return (await accounts.create_key(session, the_org.id, owner, "main")).plain

        return self.call(create)

    def take_errors(self) -> list[str]:
        errors, self.errors[:] = list(self.errors), []
        return errors

    # -- on the app's loop ------------------------------------------------------------------------

    async def _run_lifespan(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The ASGI lifespan protocol, as a server runs it."""
        startup_sent = False

        async def receive() -> Message:
            nonlocal startup_sent
            if not startup_sent:
                startup_sent = True
                return {"type": "lifespan.startup"}
            await self._shutdown.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                task_status.started()
            elif message["type"].endswith(".failed"):
                raise RuntimeError(f"{message['type']}: {message.get('message', '')}")

        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}
        await self.app(scope, receive, send)

    async def _register_host_image(self) -> None:
        """The one image the host driver can run: the host's own root (``HOST_ROOTFS``)."""
        async with transaction(self.app.state.ctx.sessions) as session:
            session.add(
                Image(
                    id=ids.new_id(),
                    name=HOST_IMAGE,
                    tag="local",
                    description="the host's own file system (tests only: no isolation)",
                    org_id=None,
                    rootfs=str(HOST_ROOTFS),
                )
            )

    async def _destroy_all(self) -> None:
        for sandbox_id in await self.driver.recover():
            await self.driver.destroy(sandbox_id)
