"""Wire format shared by the agent and the server's client.

Both ends import this module, so it must stay stdlib-only and run on python3 >= 3.9.

Frame layout (all integers big-endian)::

    uint32 header_len | uint32 payload_len | header (UTF-8 JSON object) | payload (raw bytes)

The header says what the frame is (``"t"``) and which request it belongs to (``"id"``); the
payload carries bytes that must not be re-encoded (process output, file contents). Headers are
JSON with ``ensure_ascii`` so that surrogate-escaped strings (non-UTF-8 file names) round-trip.

Frame types::

    hello   both ways, id 0, first frame on a connection: {"version", "ops"?}
    req     client -> agent: opens request ``id`` (client-chosen, never reused): {"op", "args"}
    head    agent -> client: optional metadata before any data: {"body"}
    data    both ways: a chunk of the request's byte stream: {"ch"} + payload
    end     client -> agent: no more data from the client on this request; agent -> client
            (``port.connect`` only): no more data from the agent, the request goes on
    window  both ways: the receiver grants ``n`` more payload bytes on request ``id``
    cancel  client -> agent: abandon request ``id`` (kills its command, drops its upload);
            frames already in flight may still arrive and are ignored, as are all frames for
            ids the receiver does not know
    res     agent -> client: request finished: {"body"}
    err     agent -> client: request failed: {"code", "message"}; with id 0 it explains why the
            agent is about to close the connection

Ops (``req`` args -> what the agent sends back)::

    ping         {}                                      -> res {}
    env.set      {env}                                   -> res {}
    exec         {command, env?, cwd?, timeout?, maxOutput?}
                 -> data "stdout"/"stderr" (all of stdout, then all of stderr),
                    res {exitCode, timedOut, stdoutTruncated, stderrTruncated}
    exec.stream  {command, env?, cwd?, timeout?}
                 -> head {pid}, data "stdout"/"stderr" as produced, res {exitCode, timedOut}
    file.read    {path}   -> head {size, mode, mtime}, data "file"..., res {size}
    file.write   {path, mode?} then client data... and end   -> res {size}
    port.connect {port}   -> head {}, then data both ways, end both ways, res {}
                 (err port_closed when nothing listens; see ``portconnect``)

New capabilities are new op names; the agent lists its ops in its hello.

Flow control works like HTTP/2: each side may send at most ``INITIAL_WINDOW`` bytes per request
before the receiver grants more with ``window`` frames. A ``data`` frame costs its payload plus
``FRAME_COST`` (so a flood of tiny or empty frames is bounded too), and a request has at most one
``head`` and one final ``res``/``err``. A receiver therefore never holds more than one window per
request, and one slow request cannot stall the others on a connection.

Version 2 (this one) added ``FRAME_COST``; version 1 charged payload bytes only.
"""

from __future__ import annotations

import struct

from .jsonc import dumps, loads

TYPE_CHECKING = False  # the agent does not import typing at run time (start-up cost)
if TYPE_CHECKING:  # typing.TypeGuard is 3.10+; annotations are never evaluated at run time
    from typing import Any, Dict, Mapping, Tuple, TypeGuard

    Header = Dict[str, Any]
else:
    Header = dict

PROTOCOL_VERSION = 2

PREFIX = struct.Struct(">II")
MAX_HEADER_SIZE = 1024 * 1024  # room for a 100 000-character command, JSON-escaped
MAX_PAYLOAD_SIZE = 256 * 1024
INITIAL_WINDOW = 1024 * 1024
# What a data frame costs against the window on top of its payload: roughly what the receiver
# spends holding one (prefix, parsed header, bookkeeping).
FRAME_COST = 512
# Requests open at once on one connection; a client that exceeds it is disconnected, so an
# agent never holds more than this many windows per connection.
MAX_CONCURRENT_REQUESTS = 1024
MAX_REQUEST_ID = 2**53 - 1  # exact in every JSON implementation

HELLO = "hello"
REQ = "req"
HEAD = "head"
DATA = "data"
END = "end"
WINDOW = "window"
CANCEL = "cancel"
RES = "res"
ERR = "err"
FRAME_TYPES = frozenset({HELLO, REQ, HEAD, DATA, END, WINDOW, CANCEL, RES, ERR})

# Error codes carried by ``err`` frames.
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
NOT_FOUND = "not_found"
IS_A_DIRECTORY = "is_a_directory"
NOT_A_DIRECTORY = "not_a_directory"
NOT_A_FILE = "not_a_file"
PERMISSION_DENIED = "permission_denied"
IO_ERROR = "io_error"
SPAWN_FAILED = "spawn_failed"
TOO_MANY_REQUESTS = "too_many_requests"
PROTOCOL_ERROR = "protocol_error"
VERSION_MISMATCH = "version_mismatch"
INTERNAL = "internal"
SLOW_CONSUMER = "slow_consumer"  # a terminal client stayed behind too long
PORT_CLOSED = "port_closed"  # port.connect: nothing listens on that port inside


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame; the connection must be closed."""


class OpError(Exception):
    """A request failed in a way the peer should hear about as an ``err`` frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FrameTooLarge(ValueError):
    """A frame this side was about to send exceeds what the peer accepts."""


def encode_frame(header: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """Build one frame; refuses to build what the peer would reject, so bugs fail loudly here."""
    return encode_head(header, len(payload)) + payload


def encode_head(header: Mapping[str, Any], payload_len: int) -> bytes:
    """A frame without its payload (the prefix and the header), checked like ``encode_frame``:
    for writers that send the payload from where it already is."""
    raw = dumps(header).encode("ascii")
    if len(raw) > MAX_HEADER_SIZE:
        raise FrameTooLarge(f"frame header of {len(raw)} bytes exceeds {MAX_HEADER_SIZE}")
    if payload_len > MAX_PAYLOAD_SIZE:
        raise FrameTooLarge(f"payload of {payload_len} bytes exceeds {MAX_PAYLOAD_SIZE}")
    return PREFIX.pack(len(raw), payload_len) + raw


def parse_prefix(prefix: bytes) -> Tuple[int, int]:
    """Return (header_len, payload_len), rejecting sizes before anything is buffered."""
    header_len, payload_len = PREFIX.unpack(prefix)
    if header_len == 0 or header_len > MAX_HEADER_SIZE:
        raise ProtocolError(f"bad header length {header_len}")
    if payload_len > MAX_PAYLOAD_SIZE:
        raise ProtocolError(f"payload length {payload_len} exceeds {MAX_PAYLOAD_SIZE}")
    return header_len, payload_len


def parse_header(raw: bytes) -> Header:
    """Decode and sanity-check a header: an object with a known ``t`` and an int ``id``."""
    try:
        header = loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame header is not JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise ProtocolError("frame header nests too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not a JSON object")
    kind = header.get("t")
    if not isinstance(kind, str) or kind not in FRAME_TYPES:
        raise ProtocolError(f"unknown frame type {_short(kind)}")
    sid = header.get("id", 0)
    if not is_int(sid) or not 0 <= sid <= MAX_REQUEST_ID:
        raise ProtocolError(f"bad request id {_short(sid)}")
    header["id"] = sid
    return header


def data_cost(payload_len: int) -> int:
    """What a data frame with this much payload costs against the receiver's window."""
    return payload_len + FRAME_COST


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def is_int(value: object) -> TypeGuard[int]:
    """JSON ints only: ``True`` is an int to Python but not to the protocol."""
    return isinstance(value, int) and not isinstance(value, bool)
