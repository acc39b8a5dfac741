"""``dumps``/``loads`` with exactly the results of ``json.dumps(obj, separators=(",", ":"))`` and
``json.loads(text)``, from the C accelerator ``_json`` alone.

``import json`` imports ``re`` and costs a visible part of the agent's start-up; the work is done
by ``_json`` either way. This module wires up the same C entry points the same way
``json.encoder.JSONEncoder`` and ``json.decoder.JSONDecoder`` do with their defaults (ASCII
output, circular-reference check, NaN/Infinity allowed; strict strings, no hooks), so both sides
of the protocol accept and produce the same documents whichever module they use. Errors are
``ValueError``s worded like ``json.JSONDecodeError`` (for malformed strings the C scanner needs
``json.decoder`` itself: it is imported then).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

try:
    from _json import encode_basestring_ascii, make_encoder, make_scanner
except ImportError:  # pragma: no cover - every CPython has _json
    make_scanner = None  # type: ignore[assignment,misc]

WHITESPACE = " \t\n\r"


class DecodeError(ValueError):
    """Malformed JSON; ``str()`` reads like ``json.JSONDecodeError``'s."""

    def __init__(self, msg: str, doc: str, pos: int) -> None:
        lineno = doc.count("\n", 0, pos) + 1
        colno = pos - doc.rfind("\n", 0, pos)
        super().__init__(f"{msg}: line {lineno} column {colno} (char {pos})")
        self.msg, self.doc, self.pos, self.lineno, self.colno = msg, doc, pos, lineno, colno


def _default(o: Any) -> Any:
    raise TypeError(f"Object of type {o.__class__.__name__} is not JSON serializable")


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads from a ``JSONDecoder``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {
        "-Infinity": float("-inf"),
        "Infinity": float("inf"),
        "NaN": float("nan"),
    }.__getitem__


_context: Any = _ScannerContext()
_scan = make_scanner(_context) if make_scanner is not None else None


def dumps(obj: Any) -> str:
    """``json.dumps(obj, separators=(",", ":"))``."""
    if _scan is None:  # pragma: no cover
        import json

        return json.dumps(obj, separators=(",", ":"))
    if isinstance(obj, str):
        return encode_basestring_ascii(obj)
    # A fresh encoder per call, as JSONEncoder.iterencode builds one: the markers dict of the
    # circular-reference check must start empty even after an earlier call failed halfway.
    encode = make_encoder({}, _default, encode_basestring_ascii, None, ":", ",", False, False, True)
    chunks = encode(obj, 0)
    return "".join(chunks if isinstance(chunks, (list, tuple)) else list(chunks))


def loads(text: str) -> Any:
    """``json.loads(text)`` for a ``str``."""
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    if text.startswith("\ufeff"):
        raise DecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        obj, pos = _scan(text, len(text) - len(text.lstrip(WHITESPACE)))
    except StopIteration as exc:
        raise DecodeError("Expecting value", text, exc.value) from None
    except SystemError:
        # Up to 3.11 the C scanner reports malformed strings with json.decoder.JSONDecodeError
        # taken from sys.modules, and fails like this when nobody imported it: do that now and
        # let json word the error.
        import json

        return json.loads(text)
    end = len(text.rstrip(WHITESPACE))
    if pos < end:
        extra = text[pos:end]
        raise DecodeError("Extra data", text, pos + len(extra) - len(extra.lstrip(WHITESPACE)))
    return obj
