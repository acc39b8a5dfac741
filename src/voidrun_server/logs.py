"""Logging set-up: one format, and API keys never reach a log line.

WebSocket clients authenticate with ``?apiKey=…`` in the URL, and uvicorn logs request URLs.
Redaction happens in the log record itself, so every logger and handler is covered.
"""

from __future__ import annotations

import logging
import re

_SECRET = re.compile(r"((?:api[_-]?key)=)[^&\s\"']+", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET.sub(r"\1***", text)


class _RedactingRecord(logging.LogRecord):
    def getMessage(self) -> str:  # noqa: N802 - the logging API's name
        return redact(super().getMessage())


def configure(level: str) -> None:
    logging.setLogRecordFactory(_RedactingRecord)
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
