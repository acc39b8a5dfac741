"""The agent's log: one line per message on stderr, ``voidrun-agent: LEVEL message``.

``logging`` costs a visible part of the agent's start-up and the agent needs none of it: there is
one destination, no configuration, and messages are rare. ``exception`` imports ``traceback``
only when there is a traceback to print.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _emit(level: str, message: str, args: tuple[Any, ...]) -> None:
    try:
        text = message % args if args else message
    except (TypeError, ValueError):
        text = f"{message} {args!r}"
    try:
        sys.stderr.write(f"voidrun-agent: {level} {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass  # nowhere to report that stderr is gone


def info(message: str, *args: Any) -> None:
    _emit("INFO", message, args)


def warning(message: str, *args: Any) -> None:
    _emit("WARNING", message, args)


def error(message: str, *args: Any) -> None:
    _emit("ERROR", message, args)


def exception(message: str, *args: Any) -> None:
    """``error`` plus the traceback of the exception being handled."""
    import traceback

    _emit("ERROR", message, args)
    try:
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
