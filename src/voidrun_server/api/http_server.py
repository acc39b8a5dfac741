"""HTTP/1.1 limits that must hold before a request reaches the app: head size, head time, and
the number of open connections.

Why a protocol subclass and not middleware: middleware runs after uvicorn has parsed the whole
request head, and httptools has no head-size limit (it accumulates a header value until its end,
so one 20 MiB header is read and kept in memory in full). uvicorn has no timer for a connection
that has not sent a complete head (its keep-alive timer is armed only after a first response),
so a silent connection or a slowloris that trickles header bytes is never cut off. And
uvicorn's ``limit_concurrency`` is checked only once a head is parsed and answers in plain text;
idle connections it counts keep their sockets. Here each rule is applied as bytes arrive:

* **head size** — bytes are counted while the parser is between messages or inside a head; only
  the part of a chunk that still fits is fed to the parser, and if the head has not ended within
  the limit the server stops reading and answers 431 (or 414 when the request line itself is
  not finished), then closes the connection. Memory per connection stays below the limit plus
  one socket read.
* **head time** — the clock starts when a connection opens and whenever bytes of a new request
  arrive; the head must be complete within the timeout, or the connection gets 408 and is
  closed. Once the head is complete nothing is timed, so request bodies, responses, SSE,
  downloads and WebSockets are not affected. Idle time between requests stays governed by
  uvicorn's keep-alive timeout.
* **connections** — a connection that would exceed the limit is answered 503 at once and closed,
  so the limit bounds open sockets (and file descriptors), not only requests in flight.

Every answer here has the API's JSON error body. Behaviour otherwise is uvicorn's
``HttpToolsProtocol`` unchanged (uvloop + httptools stay the fast path; ``bench/http_limits.py``
measures the cost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

log = logging.getLogger(__name__)

# A refused connection is logged at most this often (a flood must not flood the log too).
_WARN_EVERY = 10.0
# Default connection limit: half the open-file limit (the rest is for sandboxes' agent sockets,
# disks, the database and logs), capped because each connection also costs memory.
CONNECTION_CAP = 16384


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int
    head_timeout: float
    max_connections: int


def error_response(
    status: int, error: str, details: str, extra: list[tuple[bytes, bytes]]
) -> bytes:
    """A complete ``connection: close`` response with the API's JSON error body."""
    body = json.dumps({"error": error, "details": details}).encode()
    lines = [STATUS_LINE[status]]
    for name, value in extra:
        lines += [name, b": ", value, b"\r\n"]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]
    return b"".join(lines)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above; one instance per connection."""

    limits: ClassVar[HttpLimits]
    _last_warning: ClassVar[float] = 0.0
    # Slots, not instance-dict entries: uvicorn's instance already holds ~30 attributes, and
    # more would take the dict past CPython's key-sharing size and slow every attribute access.
    __slots__ = (
        "_head_pending",
        "_head_bytes",
        "_line_done",
        "_heads",
        "_head_started",
        "_head_timer",
        "_upgraded",
    )

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._head_pending = True  # the parser is between messages or inside a request head
        self._head_bytes = 0  # bytes read for the pending head
        self._line_done = False  # the pending head's request line has ended
        self._heads = 0  # heads completed so far (tells whether a feed completed one)
        self._head_started: float | None = None  # loop time the head being timed began
        self._head_timer: asyncio.TimerHandle | None = None
        self._upgraded = False

    # -- connection events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.connections.discard(self)
            self._warn("connection refused: %d open connections is the limit", self.limits)
            self._refuse(
                503,
                "Too many connections",
                f"the server accepts at most {self.limits.max_connections} connections at once; "
                "retry later",
            )
            return
        self._head_begins()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._head_pending:
            super().data_received(data)  # a body, or bytes after a WebSocket upgrade
            return
        if self._head_started is None:
            self._head_begins()  # the first bytes of a request after a keep-alive pause
        room = self.limits.max_head_bytes - self._head_bytes
        if not self._line_done and data.find(b"\n", 0, room) >= 0:
            self._line_done = True
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # The head may still end inside the part that fits: feed only that much first.
        heads = self._heads
        if room > 0:
            self._head_bytes += room
            super().data_received(data[:room])
            if self._upgraded or self.transport.is_closing():
                return
            if self._heads != heads:  # it ended in time; the rest is body or the next request
                self.data_received(data[room:])
                return
        self._refuse_head()

    def handle_websocket_upgrade(self) -> None:
        self._upgraded = True
        super().handle_websocket_upgrade()

    # -- parser callbacks --------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._head_pending = False
        self._head_bytes = 0
        self._heads += 1
        self._head_started = None  # the timer, if running, finds nothing to time out
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_pending = True
        self._line_done = False

    def send_400_response(self, msg: str) -> None:
        """Malformed requests get the JSON error body too (uvicorn's is plain text)."""
        self._refuse(400, "Invalid HTTP request", msg)

    # -- limits ------------------------------------------------------------------------------

    def _head_begins(self) -> None:
        """Start timing a head. One timer per connection is re-armed lazily rather than set and
        cancelled per request: on a busy keep-alive connection that halves the timer work."""
        self._head_started = self.loop.time()
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_timeout, self._head_deadline)

    def _cancel_head_timer(self) -> None:
        self._head_started = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_deadline(self) -> None:
        self._head_timer = None
        if self._head_started is None or self.transport.is_closing():
            return  # no head is being read now
        remaining = self._head_started + self.limits.head_timeout - self.loop.time()
        if remaining > 0:  # a later head than the one this timer was set for
            self._head_timer = self.loop.call_later(remaining, self._head_deadline)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a response is under way: no room for another status line
            return
        timeout = f"{self.limits.head_timeout:g}"
        self._refuse(
            408, "Request header timeout", f"send the request line and headers within {timeout} s"
        )

    def _refuse_head(self) -> None:
        limit = self.limits.max_head_bytes
        if not self._line_done:
            details = f"the request line alone is longer than {limit} bytes"
            self._refuse(414, "Request URI too long", details)
        else:
            details = f"the request line and headers together may be at most {limit} bytes"
            self._refuse(431, "Request header fields too large", details)

    def _refuse(self, status: int, error: str, details: str) -> None:
        """Answer once, stop reading and close: nothing more from this client is parsed."""
        self._cancel_head_timer()
        self._head_pending = False
        if self.transport.is_closing():
            return
        log.debug("%s from %s: %s", status, self.client, details)
        extra = list(self.server_state.default_headers)
        self.transport.write(error_response(status, error, details, extra))
        self.transport.close()

    def _warn(self, message: str, limits: HttpLimits) -> None:
        now = time.monotonic()
        if now - LimitedHttpToolsProtocol._last_warning >= _WARN_EVERY:
            LimitedHttpToolsProtocol._last_warning = now
            log.warning(message, limits.max_connections)


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class bound to ``limits`` (uvicorn instantiates the class it is given)."""
    return type("BoundHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits})


def raise_open_file_limit() -> tuple[int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return (before, after).

    Each client connection is a file descriptor, and the default soft limit (often 1024) would
    make ``accept`` fail long before any limit of ours applies.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
        return soft, soft
    return soft, target


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 1024 * 1024


def default_max_connections(open_files: int) -> int:
    if open_files == resource.RLIM_INFINITY:
        return CONNECTION_CAP
    return max(16, min(open_files // 2, CONNECTION_CAP))
