"""A streaming ``multipart/form-data`` reader for envd's ``POST /files``: each part's body is
passed on as it arrives (never spooled), and the parts are read one after the other.

    reader = MultipartReader(chunks, boundary)
    while (part := await reader.next_part()) is not None:
        async for piece in reader.body(): ...
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ...errors import InvalidInputError

MAX_HEAD = 16 * 1024  # the headers of one part
MAX_BOUNDARY = 200
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def boundary_of(content_type: str) -> bytes:
    for name, value in _PARAM.findall(content_type):
        if name.lower() == "boundary":
            found = str(value).strip().strip('"')
            if 0 < len(found) <= MAX_BOUNDARY:
                return found.encode("latin-1")
    raise InvalidInputError("Invalid multipart body", "Content-Type has no usable boundary")


@dataclass(frozen=True)
class Part:
    name: str
    filename: str | None


def _part(head: bytes) -> Part:
    name, filename = "", None
    for line in head.decode("utf-8", "replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        for param, raw in _PARAM.findall(value):
            text = raw.strip()
            if text.startswith('"'):
                text = text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if param.lower() == "name":
                name = text
            elif param.lower() == "filename":
                filename = text
    return Part(name, filename)


class MultipartReader:
    def __init__(self, chunks: AsyncIterator[bytes], boundary: bytes) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._delimiter = b"\r\n--" + boundary
        self._first = b"--" + boundary
        self._started = False
        self._done = False
        self._in_body = False

    async def _more(self) -> None:
        try:
            self._buffer += await anext(self._chunks)
        except StopAsyncIteration:
            raise InvalidInputError("Invalid multipart body", "it ends too early") from None

    async def _until(self, marker: bytes, limit: int) -> bytes:
        while (at := self._buffer.find(marker)) < 0:
            if len(self._buffer) > limit:
                raise InvalidInputError("Invalid multipart body", "a part's head is too long")
            await self._more()
        taken = bytes(self._buffer[:at])
        del self._buffer[: at + len(marker)]
        return taken

    async def next_part(self) -> Part | None:
        if self._in_body:
            async for _ in self.body():
                pass  # the unread rest of the previous part
        if self._done:
            return None
        if not self._started:
            await self._until(self._first, MAX_HEAD)  # a preamble is ignored
            self._started = True
        while len(self._buffer) < 2:
            await self._more()
        if self._buffer[:2] == b"--":
            self._done = True
            return None
        head = await self._until(b"\r\n\r\n", MAX_HEAD)
        self._in_body = True
        return _part(head.removeprefix(b"\r\n"))

    async def body(self) -> AsyncIterator[bytes]:
        """The current part's bytes, up to the next delimiter."""
        keep = len(self._delimiter) - 1
        while self._in_body:
            at = self._buffer.find(self._delimiter)
            if at >= 0:
                piece = bytes(self._buffer[:at])
                del self._buffer[: at + len(self._delimiter)]
                self._in_body = False
                if piece:
                    yield piece
                return
            if len(self._buffer) > keep:
                piece = bytes(self._buffer[: len(self._buffer) - keep])
                del self._buffer[: len(piece)]
                yield piece
            await self._more()
