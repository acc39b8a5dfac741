"""Bridging a WebSocket to a terminal stream in the sandbox (CONTRACT §B.5).

Protocol: raw terminal bytes both ways, no envelope. Client frames are keystrokes (text frames
as UTF-8; binary frames byte for byte). Server frames are text: output is decoded
incrementally, so a frame never ends inside a UTF-8 character and the SDKs' UTF-8 decoding of
each frame cannot fail.

Errors before the upgrade (no key, unknown sandbox or session) are plain HTTP responses with a
JSON body: routes raise before calling :func:`bridge`, and Starlette sends the error handler's
response as a WebSocket denial response. After the upgrade, the close code says why it ended:

* 1000 — the terminal's shell exited;
* 1008 — this client fell too far behind (see below);
* 1011 — the sandbox agent failed or went away.

Backpressure: output is read from the agent only as fast as the WebSocket accepts it, and the
agent connection's flow control caps what is in flight per client at one window (1 MiB). In the
agent each client has a queue; while any client has more than 1 MiB queued, the terminal is not
read, so the program slows down as it would over ssh (``agent/pty.py``). A client still behind
10 s after that pause began is detached there and closed here with 1008 (it may reconnect and
gets the scrollback first); the terminal and the other clients then go on. A client that stops
reading while its send is stuck is closed once a send has been blocked for
``SEND_STALL_LIMIT``. Server memory per client is bounded either way.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import Awaitable, Callable

import anyio
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..agentclient import SLOW_CONSUMER, AgentError, AgentOperationError
from ..errors import VoidRunError
from ..services.commands import LiveStream

log = logging.getLogger(__name__)

NORMAL, TOO_SLOW, FAILED = 1000, 1008, 1011
SEND_STALL_LIMIT = 60.0
CLOSE_LIMIT = 5.0

Typist = Callable[[str], Awaitable[None]]


INPUT_FAILURE_GRACE = 2.0


class _Outcome:
    def __init__(self) -> None:
        self.code, self.reason, self.decided = NORMAL, "terminal closed", False

    def set(self, code: int, reason: str) -> None:
        if not self.decided:  # the first cause wins
            self.code, self.reason, self.decided = code, reason[:120], True


async def bridge(websocket: WebSocket, output: LiveStream, type_in: Typist) -> None:
    """Accept the WebSocket and pump both ways until either side ends, then close it."""
    await websocket.accept()
    outcome = _Outcome()
    async with anyio.create_task_group() as tasks:
        output_done = anyio.Event()

        async def pump_output() -> None:
            await _send_output(websocket, output, outcome)
            output_done.set()
            tasks.cancel_scope.cancel()

        async def pump_input() -> None:
            failure = await _receive_input(websocket, type_in)
            if failure is not None:
                # Typing into a shell that has just exited fails: the output side, about to
                # end with the exit code, says what happened; otherwise the failure does.
                with anyio.move_on_after(INPUT_FAILURE_GRACE):
                    await output_done.wait()
                outcome.set(FAILED, failure)
            tasks.cancel_scope.cancel()

        tasks.start_soon(pump_output)
        tasks.start_soon(pump_input)
    if websocket.application_state != WebSocketState.DISCONNECTED:
        with anyio.move_on_after(CLOSE_LIMIT, shield=True):
            try:
                await websocket.close(outcome.code, outcome.reason)
            except (WebSocketDisconnect, RuntimeError, OSError):
                pass  # the client left first


async def _send_output(websocket: WebSocket, output: LiveStream, outcome: _Outcome) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        async for chunk in output.chunks():  # also keeps the sandbox awake while open
            if chunk is None:
                continue
            text = decoder.decode(chunk.data)
            if not text:
                continue
            with anyio.move_on_after(SEND_STALL_LIMIT) as stalled:
                await websocket.send_text(text)
            if stalled.cancelled_caught:
                outcome.set(TOO_SLOW, "client too slow")
                return
        code = output.result.get("exitCode")
        outcome.set(NORMAL, f"shell exited with code {code}")
    except AgentOperationError as exc:
        if exc.code == SLOW_CONSUMER:
            outcome.set(TOO_SLOW, "client too slow")
        else:
            outcome.set(FAILED, exc.message)
    except AgentError as exc:
        outcome.set(FAILED, "sandbox agent unavailable")
        log.info("terminal stream ended: %s", exc)
    except (WebSocketDisconnect, OSError, RuntimeError):
        pass  # the client went away mid-send


async def _receive_input(websocket: WebSocket, type_in: Typist) -> str | None:
    """Type what the client sends until it leaves (None) or typing fails (why)."""
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                text = raw.decode("utf-8", "surrogateescape")  # the agent restores the bytes
            if text:
                await type_in(text)
    except (VoidRunError, AgentError) as exc:
        return str(exc)
    except (WebSocketDisconnect, RuntimeError):
        return None
