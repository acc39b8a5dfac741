"""Server-Sent Events framing the official SDK parses (CONTRACT §B.1).

One event per output line: ``event: <name>`` then ``data: <line>`` then a blank line. The SDK
joins several ``data:`` lines with ``\\n`` and strips each, so a chunk is split on newlines and
each line becomes its own event; a partial last line is held until its newline (or the end).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


def event(name: str, data: str) -> bytes:
    lines = data.split("\n") if data else [""]
    body = "".join(f"data: {line}\n" for line in lines)
    return f"event: {name}\n{body}\n".encode()


def json_event(name: str, payload: dict[str, Any]) -> bytes:
    return event(name, json.dumps(payload, separators=(",", ":")))


class LineSplitter:
    """Turns arbitrary byte chunks of one channel into complete text lines."""

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, chunk: bytes) -> list[str]:
        data = self._pending + chunk
        *lines, self._pending = data.split(b"\n")
        return [line.decode("utf-8", errors="replace").rstrip("\r") for line in lines]

    def flush(self) -> list[str]:
        rest, self._pending = self._pending, b""
        return [rest.decode("utf-8", errors="replace")] if rest else []


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    """Stream ``events``; when the client disconnects Starlette cancels the iterator."""
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
