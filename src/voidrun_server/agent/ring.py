"""A bounded output buffer addressed by absolute byte offsets.

Background commands and terminals write output nobody may be reading yet, and several readers
(attach streams, a terminal's clients) follow it at their own pace. Each reader keeps the
absolute offset it has read up to. The ring only ever drops from the front, so the producer
never waits for a reader, memory stays bounded, and a reader that fell behind learns exactly
how many bytes it lost (its offset is below ``start``) instead of silently reading garbage.

Output is kept as records ``(channel, bytes)`` so a replay keeps stdout and stderr interleaved
as they were produced. Consecutive writes to one channel are coalesced into one record, and the
number of records is bounded too: alternating one-byte writes cannot blow up the bookkeeping.
"""

from __future__ import annotations

from _bisect import bisect_right

from .sync import Event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Tuple

COALESCE_LIMIT = 64 * 1024
DEFAULT_MAX_RECORDS = 8192


class Ring:
    def __init__(self, capacity: int, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.max_records = max_records
        self._starts: List[int] = []  # absolute offset of each record, increasing
        self._channels: List[str] = []
        self._data: List[bytearray] = []
        self._head = 0  # index of the oldest live record
        self.start = 0  # absolute offset of the oldest byte still kept (= bytes dropped)
        self.end = 0  # absolute offset just past the newest byte
        self.closed = False
        self._changed = Event()

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def dropped(self) -> bool:
        """Whether anything was ever dropped from the front."""
        return self.start > 0

    def append(self, channel: str, data: bytes) -> None:
        if not data:
            return
        last = len(self._data) - 1
        if (
            last >= self._head
            and self._channels[last] == channel
            and len(self._data[last]) < COALESCE_LIMIT
        ):
            self._data[last] += data
        else:
            self._starts.append(self.end)
            self._channels.append(channel)
            self._data.append(bytearray(data))
        self.end += len(data)
        self._trim()
        self._notify()

    def read(self, offset: int, limit: int) -> Tuple[int, str, bytes]:
        """``(position, channel, data)``: up to ``limit`` bytes of one record from ``offset``.

        ``position`` is where the returned data starts; it is above ``offset`` when the bytes in
        between were dropped. ``data`` is empty when the reader has caught up.
        """
        pos = max(offset, self.start)
        if pos >= self.end:
            return pos, "", b""
        i = bisect_right(self._starts, pos, self._head) - 1
        skip = pos - self._starts[i]
        return pos, self._channels[i], bytes(self._data[i][skip : skip + max(limit, 1)])

    def read_all(self, offset: int) -> Tuple[int, bytes]:
        """``(position, data)``: everything from ``offset`` (or the oldest kept byte) to the end."""
        pos = max(offset, self.start)
        if pos >= self.end:
            return pos, b""
        i = bisect_right(self._starts, pos, self._head) - 1
        parts = [bytes(self._data[i][pos - self._starts[i] :])]
        parts.extend(bytes(d) for d in self._data[i + 1 :])
        return pos, b"".join(parts)

    async def wait(self, offset: int, limit: float | None = None) -> bool:
        """Return once there are bytes past ``offset`` or the ring is closed (True), or after
        ``limit`` seconds without either (False)."""
        while offset >= self.end and not self.closed:
            if not await self._changed.wait(limit):
                return False
        return True

    def close(self) -> None:
        """No more output will be followed (readers that caught up stop waiting)."""
        self.closed = True
        self._notify()

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one makes the next wait block again.
        self._changed.set()
        self._changed = Event()

    def _trim(self) -> None:
        while self.size > self.capacity or len(self._data) - self._head > self.max_records:
            first = self._data[self._head]
            excess = self.size - self.capacity
            if len(self._data) - self._head > self.max_records or excess >= len(first):
                self.start += len(first)
                self._data[self._head] = bytearray()  # free it now; compaction is lazy
                self._head += 1
            else:
                del first[:excess]
                self._starts[self._head] += excess
                self.start += excess
        if self._head > 64 and self._head * 2 > len(self._data):
            del self._starts[: self._head], self._channels[: self._head], self._data[: self._head]
            self._head = 0
