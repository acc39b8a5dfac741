"""``sandboxes shell``: a terminal in a sandbox over the PTY WebSocket (CONTRACT §B.5).

The API resizes only persistent terminals, so the shell is one: ``POST …/pty/sessions`` at this
terminal's size, the WebSocket attached to it, ``POST …/resize`` on each SIGWINCH, and the
session deleted when the command ends (however it ends, short of SIGKILL). Keystrokes go as
binary frames, byte for byte. From a terminal, stdin is in raw mode (Ctrl-C and Ctrl-D reach
the shell) and restored on exit; from a pipe or file, its bytes are typed in and its end types
``exit``, so ``echo 'ls' | voidrun-server sandboxes shell ID`` runs ``ls`` and ends. (Not
Ctrl-D: typed before the shell's line editor has the terminal, the line discipline turns it
into an end of file the shell never sees, and the shell would wait forever.)

The server closes the WebSocket with 1000 and "shell exited with code N" when the shell exits:
the command exits with N. A terminal too slow to keep up (1008) or a failed agent (1011) is an
error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import termios
import tty
from collections.abc import Iterator

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from .client import USER_AGENT, ApiError, Target, checked, refusal, unreachable

END = b"exit\n"  # typed when stdin ends
EXITED = re.compile(r"shell exited with code (-?\d+)")
MAX_COLS, MAX_ROWS = 500, 200  # the API's limits
STDIN, STDOUT = 0, 1


def run_shell(target: Target, sandbox_id: str) -> int:
    return asyncio.run(_shell(target, sandbox_id))


def terminal_size() -> tuple[int, int]:
    cols, rows = shutil.get_terminal_size((80, 24))
    return max(1, min(cols, MAX_COLS)), max(1, min(rows, MAX_ROWS))


async def _shell(target: Target, sandbox_id: str) -> int:
    headers = {"X-API-Key": target.key, "User-Agent": USER_AGENT}
    base = f"/sandboxes/{sandbox_id}/pty/sessions"
    async with httpx.AsyncClient(base_url=target.url, headers=headers, timeout=30) as http:
        cols, rows = terminal_size()
        try:
            created = await http.post(base, json={"cols": cols, "rows": rows})
        except httpx.TransportError as exc:
            raise unreachable(target, exc) from exc
        session = f"{base}/{checked(target, created, sandbox_id)['data']['sessionId']}"
        try:
            return await _attach(target, sandbox_id, session, http)
        finally:
            with contextlib.suppress(httpx.HTTPError):
                await asyncio.shield(http.delete(session))


async def _attach(target: Target, sandbox_id: str, session: str, http: httpx.AsyncClient) -> int:
    try:
        async with connect(
            target.ws_url(session),
            user_agent_header=USER_AGENT,
            max_size=None,
            open_timeout=30,
        ) as ws:
            with raw_mode(STDIN):
                left = await _pump(ws, session, http)
            return 128 + left if left else _exit_code(ws)
    except InvalidStatus as exc:
        body = exc.response.body or b""
        raise refusal(target, exc.response.status_code, body.decode(), sandbox_id) from exc
    except (OSError, WebSocketException) as exc:
        raise unreachable(target, exc) from exc


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keystrokes go to the remote shell unprocessed; the terminal is restored afterwards."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _pump(ws: ClientConnection, session: str, http: httpx.AsyncClient) -> int:
    """Until the server closes the WebSocket, or SIGTERM/SIGHUP (then: that signal)."""
    loop = asyncio.get_running_loop()
    keys: asyncio.Queue[bytes] = asyncio.Queue()
    resized = asyncio.Event()
    stop = asyncio.Event()
    caught: list[int] = []
    typing = _read_stdin(loop, keys)
    signals = [signal.SIGTERM, signal.SIGHUP]

    def leave(sig: int) -> None:
        caught.append(sig)
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, leave, sig)
    if os.isatty(STDOUT) or os.isatty(STDIN):
        loop.add_signal_handler(signal.SIGWINCH, resized.set)
        signals.append(signal.SIGWINCH)
    tasks = [
        asyncio.create_task(_output(ws)),
        asyncio.create_task(stop.wait()),
        asyncio.create_task(_input(ws, keys)),
        asyncio.create_task(_resizer(resized, session, http)),
    ]
    try:
        await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sig in signals:
            loop.remove_signal_handler(sig)
        if typing:
            loop.remove_reader(STDIN)
    return caught[0] if caught else 0


def _read_stdin(loop: asyncio.AbstractEventLoop, keys: asyncio.Queue[bytes]) -> bool:
    """Feed stdin into ``keys`` (``b""`` at its end); True when a reader was registered."""

    def readable() -> None:
        try:
            chunk = os.read(STDIN, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        keys.put_nowait(chunk)
        if not chunk:
            loop.remove_reader(STDIN)

    try:
        loop.add_reader(STDIN, readable)
        return True
    except (PermissionError, ValueError, OSError):  # a regular file or /dev/null: read it now
        with contextlib.suppress(OSError):  # (or no stdin at all)
            while chunk := os.read(STDIN, 65536):
                keys.put_nowait(chunk)
        keys.put_nowait(b"")
        return False


async def _output(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            data = message.encode() if isinstance(message, str) else message
            while data:
                data = data[os.write(STDOUT, data) :]


async def _input(ws: ClientConnection, keys: asyncio.Queue[bytes]) -> None:
    last = b"\n"
    with contextlib.suppress(ConnectionClosed):
        while chunk := await keys.get():
            await ws.send(chunk)
            last = chunk[-1:]
        await ws.send(END if last == b"\n" else b"\n" + END)  # stdin ended: end the shell


async def _resizer(resized: asyncio.Event, session: str, http: httpx.AsyncClient) -> None:
    while True:
        await resized.wait()
        resized.clear()
        cols, rows = terminal_size()
        with contextlib.suppress(httpx.HTTPError):  # the next resize tries again
            await http.post(f"{session}/resize", json={"cols": cols, "rows": rows})


def _exit_code(ws: ClientConnection) -> int:
    code, reason = ws.close_code, ws.close_reason or ""
    if code == 1000:
        exited = EXITED.search(reason)
        return int(exited.group(1)) if exited else 0
    raise ApiError(f"The terminal ended: {reason or 'connection lost'} (WebSocket close {code}).")
