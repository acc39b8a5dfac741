"""Every route that keeps an agent stream open past its handler releases it, however the
exchange ends (the mechanics are ``api/streams.py``, tested in ``test_stream_owner.py``).

The real routes, with their services replaced by fakes whose streams never say anything: a
client that leaves before the first byte, or a server that cancels the request at shutdown,
must still leave the stream (before issue 12, ``exec-stream`` closed its agent stream in the
body's ``finally``, which never ran when the body never started: the command went on until its
timeout). ``tests/hostile/test_stream_abuse.py`` checks the same against real sandboxes.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from fastapi import FastAPI

from tests.support.asgi import Exchange, Ledger, exchange
from voidrun_server.api import deps, errors
from voidrun_server.api.routes import commands, exec, file_streams, files, pty, sessions
from voidrun_server.errors import NotFoundError
from voidrun_server.services.accounts import Principal
from voidrun_server.services.file_watches import WatchTicket
from voidrun_server.services.files import Download
from voidrun_server.services.streams import StreamRegistry

CALLER = Principal(key_id="k" * 24, org_id="o" * 24, user_id="u" * 24)
BOX = "/api/sandboxes/" + "a" * 24


class Quiet:
    """An agent stream whose command has printed nothing yet (and never will)."""

    head: dict[str, Any] = {}
    result: dict[str, Any] = {}

    def __aiter__(self) -> Quiet:
        return self

    async def __anext__(self) -> bytes:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def chunks(self, limit: float = math.inf) -> AsyncIterator[None]:
        await anyio.sleep_forever()
        yield None


async def type_in(text: str) -> None:
    pass


class FakeServices:
    """Stands in for the exec, command, shell, PTY and file services: every stream it opens
    is held in the ledger."""

    follow_limit = 60.0

    def __init__(self, ledger: Ledger, refuse: bool = False) -> None:
        self.ledger = ledger
        self.refuse = refuse

    def _hold(self, value: Any) -> AbstractAsyncContextManager[Any]:
        if self.refuse:
            raise NotFoundError("Process not found")
        return self.ledger.hold(value)

    def stream(self, *args: object) -> AbstractAsyncContextManager[Any]:  # exec, session
        return self._hold(Quiet())

    def attach(self, caller: Principal, sandbox_id: str, target: object) -> Any:
        if isinstance(target, int):  # a pid: commands/attach
            return self._hold(Quiet())
        return self._hold((Quiet(), type_in))  # a terminal

    def download(self, *args: object) -> AbstractAsyncContextManager[Any]:
        return self._hold(Download("/root/f", 10, Quiet()))

    async def claim_watch(self, session_id: str, caller: Principal, sandbox_id: str) -> WatchTicket:
        return WatchTicket(caller.org_id, sandbox_id, "/root", False, True)

    def watch(self, *args: object) -> AbstractAsyncContextManager[Any]:
        return self._hold(Quiet())


def make_app(services: FakeServices) -> FastAPI:
    app = FastAPI()
    for module in (exec, commands, sessions, pty, files):
        app.include_router(module.router)
    errors.install(app)

    async def principal() -> Principal:
        return CALLER

    async def context() -> Any:
        return SimpleNamespace(streams=StreamRegistry())

    async def fake() -> FakeServices:
        return services

    app.dependency_overrides[deps.principal] = principal
    app.dependency_overrides[deps.context] = context
    for dependency in (
        exec.exec_service,
        commands.command_service,
        sessions.shell_service,
        pty.pty_service,
        file_streams.file_service,
    ):
        app.dependency_overrides[dependency] = fake
    return app


STREAMS = [
    pytest.param("POST", "/exec-stream", {"command": "sleep 97531"}, id="exec-stream"),
    pytest.param("POST", "/commands/attach", {"pid": 7}, id="commands-attach"),
    pytest.param(
        "POST",
        "/session-exec-stream",
        {"sessionId": "s1", "command": "sleep 97531"},
        id="session-exec-stream",
    ),
    pytest.param("GET", "/files/download?path=/root/f", None, id="files-download"),
]
SOCKETS = [
    pytest.param("/pty", id="pty"),
    pytest.param("/pty/sessions/pty-1", id="pty-session"),
    pytest.param("/files/watch/w-1/stream", id="files-watch"),
]


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
@pytest.mark.parametrize(("method", "path", "payload"), STREAMS)
async def test_a_client_that_leaves_before_the_first_byte_releases_the_stream(
    method: str, path: str, payload: Any, spec_version: str
) -> None:
    ledger = Ledger()
    done = await exchange(
        make_app(FakeServices(ledger)),
        BOX + path,
        method=method,
        payload=payload,
        leave_after=0,
        spec_version=spec_version,
    )
    assert done.body == b""
    assert ledger.balanced, ledger.log


@pytest.mark.parametrize(("method", "path", "payload"), STREAMS)
async def test_a_request_cancelled_at_shutdown_releases_the_stream(
    method: str, path: str, payload: Any
) -> None:
    ledger = Ledger()

    async def once_open(sent: Exchange) -> None:
        await ledger.held.wait()

    await exchange(
        make_app(FakeServices(ledger)),
        BOX + path,
        method=method,
        payload=payload,
        during=once_open,
        cancel=True,
    )
    assert ledger.balanced, ledger.log


@pytest.mark.parametrize(("method", "path", "payload"), STREAMS)
async def test_a_refused_stream_is_a_json_error(method: str, path: str, payload: Any) -> None:
    ledger = Ledger()
    app = make_app(FakeServices(ledger, refuse=True))
    done = await exchange(app, BOX + path, method=method, payload=payload)
    assert done.status == 404 and b'"Process not found"' in done.body
    assert ledger.entered == 0


@pytest.mark.parametrize("cancel", [False, True], ids=["client-leaves", "shutdown"])
@pytest.mark.parametrize("path", SOCKETS)
async def test_a_websocket_route_releases_its_stream(path: str, cancel: bool) -> None:
    ledger = Ledger()

    async def once_open(sent: Exchange) -> None:
        await ledger.held.wait()

    done = await exchange(
        make_app(FakeServices(ledger)),
        BOX + path,
        websocket=True,
        leave_after=None if cancel else 0,
        during=once_open,
        cancel=cancel,
    )
    assert done.error is None
    assert ledger.balanced, ledger.log
