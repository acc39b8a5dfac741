"""What the files API answers, made from the agent's ``fs.*`` replies (CONTRACT §A.6).

Ops that the reference server ran as shell commands answer the exec envelope: stdout, stderr and
an exit code as the shell tool would have printed them (:class:`ExecOutcome`). A failure of the
operation itself (missing file, not a directory...) is a result with a non-zero ``exitCode``
and a shell-style message on stderr, never an HTTP error.
"""

from __future__ import annotations

import json
import math
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..agentclient import BAD_REQUEST, AgentOperationError
from ..errors import InvalidInputError
from ..schemas.files import FileInfo
from .agents import agent_text as text
from .agents import outdated_agent

Body = dict[str, Any]


@dataclass(frozen=True)
class ExecOutcome:
    stdout: str
    stderr: str = ""
    exit_code: int = 0


Render = Callable[[Body, bytes], ExecOutcome]


def refused(exc: AgentOperationError) -> ExecOutcome:
    """The exec envelope of a refused op: bad requests and an outdated agent are still HTTP
    errors; the operation's own failure (missing file...) is ``exitCode`` 1 with stderr."""
    if exc.code == BAD_REQUEST:
        raise InvalidInputError("Invalid request", text(exc.message))
    outdated = outdated_agent(exc)
    if outdated is not None:
        raise outdated
    return ExecOutcome("", text(exc.message).rstrip("\n") + "\n", 1)


def nothing(body: Body, out: bytes) -> ExecOutcome:
    return ExecOutcome("")


def head_tail(body: Body, out: bytes) -> ExecOutcome:
    return ExecOutcome(out.decode("utf-8", "replace"))


def found_paths(body: Body, out: bytes) -> ExecOutcome:
    return ExecOutcome("".join(text(p) + "\n" for p in body.get("paths", [])))


def stat_line(body: Body, out: bytes) -> ExecOutcome:
    """``{"path","size","mode":<st_mode hex>,"mtime":<epoch>,"type"}`` and a newline."""
    info = {
        "path": text(body["path"]),
        "size": int(body["size"]),
        "mode": f"{int(body['mode']):x}",
        "mtime": int(body["mtime"]),
        "type": text(body["type"]),
    }
    return ExecOutcome(json.dumps(info, ensure_ascii=False, separators=(",", ":")) + "\n")


def disk_usage_of(path: str) -> Render:
    """``du -sh``: allocated size, e.g. ``4.0K\\t/path``."""

    def render(body: Body, out: bytes) -> ExecOutcome:
        return ExecOutcome(f"{human_size(int(body['bytes']))}\t{path}\n")

    return render


def extract_problems(body: Body, out: bytes) -> ExecOutcome:
    """Entries refused for escaping the destination, one a line on stderr, exit code 2."""
    problems = [text(p) + "\n" for p in body.get("problems", [])]
    return ExecOutcome("", "".join(problems), 2 if body.get("problemCount") else 0)


def file_info(item: Body) -> FileInfo:
    """One directory entry (``lstat``) as the SDK expects it."""
    mode = int(item["mode"])
    return FileInfo(
        name=text(item["name"]),
        path=text(item["path"]),
        size=int(item["size"]),
        mode=stat.filemode(mode),
        is_dir=stat.S_ISDIR(mode),
        mod_time=datetime.fromtimestamp(float(item["mtime"]), tz=UTC),
    )


def human_size(size: int) -> str:
    """``du -h``: powers of 1024, rounded up, one decimal below 10."""
    if size < 1024:
        return str(size)
    units = "KMGTPE"
    power = min(int(math.log(size, 1024)), len(units))
    while power > 1 and size < 1024**power:  # log() may round up at exact powers
        power -= 1
    value = size / 1024**power
    tenths = math.ceil(value * 10)
    if tenths < 100:
        return f"{tenths / 10:.1f}{units[power - 1]}"
    rounded = math.ceil(value)
    if rounded >= 1024 and power < len(units):
        return f"1.0{units[power]}"
    return f"{rounded}{units[power - 1]}"
