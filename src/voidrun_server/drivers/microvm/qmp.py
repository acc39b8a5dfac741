"""A small asyncio client for the QEMU Machine Protocol (QMP), from its documented wire format
(qemu docs/interop/qmp-spec): JSON objects, one per line, over a Unix socket.

1. The server greets: ``{"QMP": {"version": ..., "capabilities": [...]}}``.
2. The client must send ``{"execute": "qmp_capabilities"}`` before any other command.
3. Each ``{"execute": NAME, "arguments": {...}, "id": N}`` gets exactly one reply carrying the
   same ``id``: ``{"return": ...}`` or ``{"error": {"class": ..., "desc": ...}}``.
4. ``{"event": NAME, "data": {...}, "timestamp": {...}}`` messages may arrive at any time,
   between replies too; they are kept for :meth:`QmpClient.wait_event`.

Every call has a deadline (``within`` seconds); no library needed for this much.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from pathlib import Path
from typing import Any

from voidrun_server.drivers.base import DriverError, DriverTimeoutError
from voidrun_server.drivers.namespace.ready import AgentNotReady, connect_agent_socket

__all__ = ["QmpClient", "QmpError"]

MAX_LINE = 1 << 20


class QmpError(DriverError):
    """QEMU answered a command with an error object."""

    message = "QEMU refused a command"


class QmpClient:
    """One QMP session: ``async with await QmpClient.connect(path, owner_uid=u, within=s)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.greeting: dict[str, Any] = {}

    @classmethod
    async def connect(cls, path: Path, *, owner_uid: int, within: float) -> QmpClient:
        """Connect to the socket at ``path``, which must be a socket owned by ``owner_uid``
        (QEMU's): never through a symlink QEMU may have put there (``namespace/ready.py``)."""
        try:
            async with asyncio.timeout(within):
                while True:
                    try:
                        sock = connect_agent_socket(path, owner_uid=owner_uid, blocking=False)
                        break
                    except AgentNotReady:
                        await asyncio.sleep(0.005)
                reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_LINE)
                client = cls(reader, writer)
                try:
                    client.greeting = await client._read()
                    if "QMP" not in client.greeting:
                        raise DriverError("not a QMP greeting", str(client.greeting)[:200])
                    await client._command("qmp_capabilities", {})
                except BaseException:
                    client.close()
                    raise
                return client
        except TimeoutError as exc:
            raise DriverTimeoutError("QMP handshake timed out", str(path)) from exc
        except OSError as exc:
            raise DriverError("cannot connect to QEMU's QMP socket", f"{path}: {exc}") from exc

    async def __aenter__(self) -> QmpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._writer.close()

    async def execute(self, command: str, *, within: float, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or :class:`QmpError`."""
        try:
            async with asyncio.timeout(within):
                return await self._command(command, arguments)
        except TimeoutError as exc:
            raise DriverTimeoutError(f"QMP {command} timed out", f"after {within:.1f}s") from exc
        except (OSError, EOFError) as exc:
            raise DriverError(f"QMP {command} failed: QEMU went away", str(exc)) from exc

    async def wait_event(self, name: str, *, within: float) -> dict[str, Any]:
        try:
            async with asyncio.timeout(within):
                while True:
                    for event in self.events:
                        if event.get("event") == name:
                            self.events.remove(event)
                            return event
                    await self._read()
        except TimeoutError as exc:
            raise DriverTimeoutError(f"no QMP event {name}", f"after {within:.1f}s") from exc
        except (OSError, EOFError) as exc:
            raise DriverError(f"waiting for QMP event {name}: QEMU went away", str(exc)) from exc

    async def _command(self, command: str, arguments: dict[str, Any]) -> Any:
        ident = next(self._ids)
        message: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            message["arguments"] = arguments
        self._writer.write(json.dumps(message).encode() + b"\n")
        await self._writer.drain()
        while True:
            reply = await self._read()
            if reply.get("id") != ident:
                continue  # an event (kept by _read) or a stale reply
            if "error" in reply:
                error = reply["error"]
                raise QmpError(f"QMP {command}: {error.get('class')}", str(error.get("desc")))
            return reply.get("return")

    async def _read(self) -> dict[str, Any]:
        line = await self._reader.readline()
        if not line:
            raise EOFError("QMP connection closed")
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise DriverError("QEMU sent invalid QMP", line[:200].decode(errors="replace")) from exc
        if not isinstance(message, dict):
            raise DriverError("QEMU sent invalid QMP", line[:200].decode(errors="replace"))
        if "event" in message:
            self.events.append(message)
        return message
