"""Server-Sent Events framing the official SDK parses (CONTRACT §B.1).

One event per output line: ``event: <name>`` then ``data: <line>`` then a blank line. The SDK
joins several ``data:`` lines with ``\\n`` and strips each, so a chunk is split on newlines and
each line becomes its own event; a partial last line is held until its newline (or the end),
or until it reaches ``MAX_LINE`` bytes.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_LINE = 64 * 1024  # longest piece of a line sent as one event
_LINE_BREAK = re.compile("\r\n|\r|\n")
SSE_HEADERS = {"Cache-Control": "no-cache", "Connection": "keep-alive", "X-Accel-Buffering": "no"}


def event(name: str, data: str) -> bytes:
    # Any of CR, LF or CRLF ends an SSE line: split on all three, so sandbox output can never
    # end a data line early and forge an event of its own.
    lines = _LINE_BREAK.split(data) if data else [""]
    body = "".join(f"data: {line}\n" for line in lines)
    return f"event: {name}\n{body}\n".encode()


def json_event(name: str, payload: dict[str, Any]) -> bytes:
    return event(name, json.dumps(payload, separators=(",", ":")))


class LineSplitter:
    """Turns arbitrary byte chunks of one channel into text lines, in linear time and bounded
    memory: a line longer than ``max_line`` bytes is sent in ``max_line`` pieces (cut on a
    UTF-8 character boundary), so output without newlines still streams, with backpressure."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._pending = bytearray()
        self._max = max_line

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if self._pending:
                self._pending += chunk[start:end]
                lines.extend(self._pieces(self._pending, complete=True))
                self._pending.clear()
            else:
                lines.extend(self._pieces(bytearray(chunk[start:end]), complete=True))
            start = end + 1
        self._pending += chunk[start:]
        lines.extend(self._pieces(self._pending, complete=False))
        return lines

    def flush(self) -> list[str]:
        rest = bytes(self._pending)
        self._pending.clear()
        return [rest.decode("utf-8", errors="replace")] if rest else []

    def _pieces(self, buf: bytearray, *, complete: bool) -> list[str]:
        """Cut ``max_line`` pieces off ``buf`` (in place); a complete line's rest too."""
        out: list[str] = []
        while len(buf) > self._max:
            cut = self._max
            while cut > self._max - 4 and buf[cut] & 0xC0 == 0x80:  # inside a character
                cut -= 1
            out.append(buf[:cut].decode("utf-8", errors="replace"))
            del buf[:cut]
        if complete:
            out.append(bytes(buf).decode("utf-8", errors="replace").rstrip("\r"))
            buf.clear()
        return out
