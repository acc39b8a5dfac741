"""``api/streams.py``: what a route enters on its ``StreamOwner`` is released however the
response ends — body finished or failed, client gone before the first byte or mid-body, the
handler failing after entering, the request cancelled at shutdown, the key revoked — and the
release is shielded from that cancellation and bounded in time."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace

import anyio
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.responses import Response

from tests.support.asgi import Exchange, Ledger, exchange
from voidrun_server.api import errors, streams
from voidrun_server.api.streams import Owner
from voidrun_server.errors import InvalidInputError
from voidrun_server.services.accounts import Principal
from voidrun_server.services.streams import StreamRegistry

CALLER = Principal(key_id="k" * 24, org_id="o" * 24, user_id="u" * 24)


class Body:
    """A response body: ``chunks`` pieces, then the end; or blocks (``hang``) or fails
    (``fail``) after them. Records when its ``finally`` ran, in the ledger's log."""

    def __init__(self, ledger: Ledger, chunks: int = 2, hang: bool = False, fail: bool = False):
        self.ledger, self.chunks, self.hang, self.fail = ledger, chunks, hang, fail

    async def __call__(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.chunks):
                yield f"chunk {i}\n".encode()
            if self.fail:
                raise RuntimeError("the body failed")
            if self.hang:
                await anyio.sleep_forever()
        finally:
            self.ledger.log.append("body closed")


def make_app(ledger: Ledger, body: Body, registry: StreamRegistry | None = None) -> FastAPI:
    app = FastAPI()
    app.state.ctx = SimpleNamespace(streams=registry or StreamRegistry())
    errors.install(app)

    @app.post("/stream")
    async def stream(owner: Owner, fail: bool = False, final: bool = True) -> Response:
        await owner.enter(ledger.hold(None))
        if fail:
            raise InvalidInputError("failed after entering")
        last = b"revoked\n" if final else None
        return owner.respond(body(), CALLER, final=last, media_type="text/plain")

    @app.websocket("/ws")
    async def socket(websocket: WebSocket, owner: Owner) -> None:
        async with owner.revocable(websocket, CALLER):
            await owner.enter(ledger.hold(None))
            await websocket.accept()
            await websocket.receive()  # until the client leaves

    return app


async def test_released_when_the_body_finishes() -> None:
    ledger = Ledger()
    done = await exchange(make_app(ledger, Body(ledger)), "/stream")
    assert done.status == 200 and done.completed and done.body == b"chunk 0\nchunk 1\n"
    assert ledger.balanced
    assert ledger.log == ["entered", "body closed", "released"]


async def test_released_when_the_body_fails() -> None:
    ledger = Ledger()
    done = await exchange(make_app(ledger, Body(ledger, fail=True)), "/stream")
    assert isinstance(done.error, RuntimeError) and not done.completed
    assert ledger.balanced


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_released_when_the_client_leaves_before_the_first_byte(spec_version: str) -> None:
    """2.3: Starlette hears the disconnect; 2.4: the first send fails (as uvicorn's would)."""
    ledger = Ledger()
    app = make_app(ledger, Body(ledger, chunks=0, hang=True))
    done = await exchange(app, "/stream", leave_after=0, spec_version=spec_version)
    assert done.body == b""
    assert ledger.balanced


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"])
async def test_released_when_the_client_leaves_mid_body_after_the_body_closed(
    spec_version: str,
) -> None:
    """With 2.4 the body is left suspended at a ``yield`` (the send failed): only closing it
    explicitly runs its ``finally`` before the release."""
    ledger = Ledger()
    app = make_app(ledger, Body(ledger, hang=True))
    done = await exchange(app, "/stream", leave_after=1, spec_version=spec_version)
    assert done.body.startswith(b"chunk 0\n") and not done.completed
    assert ledger.log == ["entered", "body closed", "released"]


async def test_released_when_the_handler_fails_after_entering() -> None:
    ledger = Ledger()
    done = await exchange(make_app(ledger, Body(ledger)), "/stream?fail=true")
    assert done.status == 400 and b"failed after entering" in done.body
    assert ledger.balanced


@pytest.mark.parametrize("chunks", [0, 1], ids=["before-first-byte", "mid-body"])
async def test_released_when_the_request_is_cancelled_at_shutdown(chunks: int) -> None:
    """The release awaits (``Ledger.hold``), under a cancelled scope: it completes because it
    is shielded (FastAPI shields the exits of yield dependencies too; the owner's own shield
    also bounds it in time, see the next test)."""
    ledger = Ledger()
    app = make_app(ledger, Body(ledger, chunks=chunks, hang=True))

    async def until_streaming(sent: Exchange) -> None:
        await (sent.first_body if chunks else ledger.held).wait()

    done = await exchange(app, "/stream", during=until_streaming, cancel=True)
    assert not done.completed and len(done.body) == 8 * chunks
    assert ledger.balanced


async def test_a_release_that_hangs_is_abandoned_after_the_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(streams, "RELEASE_LIMIT", 0.05)
    owner = streams.StreamOwner(StreamRegistry())
    released = anyio.Event()

    class Stuck:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc: object) -> None:
            await anyio.sleep_forever()

    class Quick:
        async def __aenter__(self) -> None:
            return None

        async def __aexit__(self, *exc: object) -> None:
            released.set()

    await owner.enter(Quick())
    await owner.enter(Stuck())
    with caplog.at_level(logging.WARNING), anyio.fail_after(5):
        await owner.release()
    assert "took over" in caplog.text
    # Left in reverse order: the stuck one is abandoned, the ones before it are still left
    # (AsyncExitStack goes on with the cancellation as the exception).
    assert released.is_set()


@pytest.mark.parametrize("final", [True, False], ids=["final-chunk", "cut"])
async def test_a_revoked_key_ends_the_body_and_releases(final: bool) -> None:
    ledger = Ledger()
    registry = StreamRegistry()
    app = make_app(ledger, Body(ledger, hang=True), registry)

    async def revoke_when_streaming(sent: Exchange) -> None:
        await sent.first_body.wait()
        registry.end({CALLER.key_id})

    done = await exchange(app, f"/stream?final={str(final).lower()}", during=revoke_when_streaming)
    assert done.body.endswith(b"revoked\n") == final
    assert done.completed == final  # without a final chunk the body is cut short
    assert ledger.balanced


async def test_a_websocket_releases_when_the_client_leaves() -> None:
    ledger = Ledger()
    done = await exchange(make_app(ledger, Body(ledger)), "/ws", websocket=True, leave_after=0)
    assert {"type": "websocket.accept", "subprotocol": None, "headers": []} in done.sent
    assert ledger.balanced


async def test_a_websocket_whose_key_is_revoked_closes_1008_and_releases() -> None:
    ledger = Ledger()
    registry = StreamRegistry()
    app = make_app(ledger, Body(ledger), registry)

    async def revoke(sent: Exchange) -> None:
        await ledger.held.wait()
        registry.end({CALLER.key_id})

    done = await exchange(app, "/ws", websocket=True, during=revoke)
    assert done.closed_with() == streams.POLICY_VIOLATION
    assert ledger.balanced
