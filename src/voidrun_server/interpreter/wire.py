"""The NDJSON lines of ``POST /execute``, as E2B's code interpreter SDKs parse them.

Every line is one JSON object with a ``type``: ``stdout``/``stderr`` (``text``, ``timestamp``),
``result`` (a display or the cell's value: one field per MIME type, ``is_main_result``),
``error`` (``name``, ``value``, ``traceback``), ``number_of_executions`` (``execution_count``),
``keepalive`` (ignored by clients; lets the server notice a client that left) and, last,
``end_of_execution``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

Line = dict[str, Any]
Emit = Callable[[Line], None]


class ContextDiedError(Exception):
    """The kernel or shell of a context died while (or before) running a cell."""


# MIME type -> the result field the SDKs read; anything else goes to ``extra``.
MIME_FIELDS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def output(stream: str, text: str) -> Line:
    return {"type": stream, "text": text, "timestamp": now()}


def error(name: str, value: str, traceback: str = "") -> Line:
    return {"type": "error", "name": name, "value": value, "traceback": traceback}


def result(data: dict[str, Any], main: bool) -> Line:
    line: Line = {"type": "result", "is_main_result": main}
    extra: dict[str, Any] = {}
    for mime, value in data.items():
        field = MIME_FIELDS.get(mime)
        if field is None:
            extra[mime] = value
        else:
            line[field] = value
    text = line.get("text")
    # A string's repr is the value the user wants (as E2B's server does): 'abc' -> abc.
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        line["text"] = text[1:-1]
    if extra:
        line["extra"] = extra
    return line


def count(n: int) -> Line:
    return {"type": "number_of_executions", "execution_count": n}


KEEPALIVE: Line = {"type": "keepalive"}
END: Line = {"type": "end_of_execution"}


def encode(line: Line) -> bytes:
    return json.dumps(line, ensure_ascii=False, default=str).encode() + b"\n"
