"""File System routes under /api/sandboxes/{id}/ (CONTRACT §A.6, §B.6).

Request-shape problems (missing or bad parameters) are 400 before the sandbox is touched;
failures of the operation itself come back in the exec envelope (``services/files.py``).
Uploads and downloads stream: neither side ever holds a whole file (``file_streams.py``).
"""

from __future__ import annotations

import json
import re
import stat
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ...errors import InvalidInputError
from ...schemas.files import (
    CreateFileBody,
    ExecData,
    ExecEnvelope,
    FileInfo,
    FileList,
    FileListEnvelope,
)
from ...services.agents import agent_text as text
from ...services.files import ExecOutcome, clean_path, human_size
from ..deps import Caller
from . import file_streams
from .file_streams import Files, PathQuery

router = APIRouter(prefix="/api/sandboxes", tags=["File System"])
router.include_router(file_streams.router)

MAX_PATTERN = 1024
MODE = re.compile(r"^[0-7]{3,4}$")
ARCHIVE_FORMATS = ("tar", "tar.gz", "tar.bz2", "zip")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def exec_envelope(outcome: ExecOutcome) -> ExecEnvelope:
    data = ExecData(stdout=outcome.stdout, stderr=outcome.stderr, exit_code=outcome.exit_code)
    return ExecEnvelope(message="ok", data=data)


def file_info(item: dict[str, Any]) -> FileInfo:
    mode = int(item["mode"])
    return FileInfo(
        name=text(item["name"]),
        path=text(item["path"]),
        size=int(item["size"]),
        mode=stat.filemode(mode),
        is_dir=stat.S_ISDIR(mode),
        mod_time=datetime.fromtimestamp(float(item["mtime"]), tz=UTC),
    )


@router.get("/{sandbox_id}/files", response_model=FileListEnvelope)
async def list_files(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> FileListEnvelope:
    """Directory listing (``lstat``: symlinks are listed as links), sorted by name."""
    items = await files.list(caller, sandbox_id, clean_path(path, default="/root"))
    return FileListEnvelope(message="ok", data=FileList(files=[file_info(i) for i in items]))


@router.delete("/{sandbox_id}/files", response_model=ExecEnvelope)
async def delete_file(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """``rm -rf``: recursive; a missing path is success."""
    args = {"path": clean_path(path)}
    return exec_envelope(await files.run(caller, sandbox_id, "fs.delete", args))


@router.get("/{sandbox_id}/files/head-tail", response_model=ExecEnvelope)
async def head_tail(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    lines: Annotated[str | None, Query(description="1..10000, default 10.")] = None,
    head: Annotated[str | None, Query(description="Only `true` means head.")] = None,
) -> ExecEnvelope:
    try:
        count = max(1, min(10_000, int(lines))) if lines else 10
    except ValueError:
        count = 10
    args = {"path": clean_path(path), "lines": count, "head": head in (None, "true")}

    def render(body: dict[str, Any], out: bytes) -> ExecOutcome:
        return ExecOutcome(out.decode("utf-8", "replace"))

    return exec_envelope(await files.run(caller, sandbox_id, "fs.headtail", args, render))


@router.get("/{sandbox_id}/files/search", response_model=ExecEnvelope)
async def search_files(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    pattern: Annotated[str | None, Query(description="Matched as *pattern* on names.")] = None,
) -> ExecEnvelope:
    """``find <path> -name '*<pattern>*' -type f | head -100``."""
    if not pattern:
        raise InvalidInputError("pattern required")
    if len(pattern) > MAX_PATTERN or "\x00" in pattern:
        raise InvalidInputError("Invalid pattern", f"at most {MAX_PATTERN} characters, no NUL")
    args = {"path": clean_path(path, default="/root"), "pattern": pattern}

    def render(body: dict[str, Any], out: bytes) -> ExecOutcome:
        return ExecOutcome("".join(text(p) + "\n" for p in body.get("paths", [])))

    return exec_envelope(await files.run(caller, sandbox_id, "fs.search", args, render))


@router.post("/{sandbox_id}/files/mkdir", response_model=ExecEnvelope)
async def make_directory(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """``mkdir -p``."""
    args = {"path": clean_path(path)}
    return exec_envelope(await files.run(caller, sandbox_id, "fs.mkdir", args))


@router.post(
    "/{sandbox_id}/files/create",
    response_model=ExecEnvelope,
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": CreateFileBody.model_json_schema()}},
        }
    },
)
async def create_file(
    sandbox_id: str,
    request: Request,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    content: Annotated[str | None, Query(description="Text to write (else empty).")] = None,
) -> ExecEnvelope:
    """Creates parents; writes ``content`` (query or JSON body) or touches the file."""
    target = clean_path(path)
    data = content.encode() if content is not None else None
    body = await request.body()
    if body.strip():
        data = _create_content(request.headers.get("content-type", ""), body, data)
    return exec_envelope(await files.create(caller, sandbox_id, target, data))


def _create_content(content_type: str, body: bytes, fallback: bytes | None) -> bytes | None:
    """JSON ``{"content": ...}``; with a non-JSON content type the raw body is the content."""
    media = content_type.split(";")[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        return body
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise InvalidInputError("Invalid JSON body", str(exc)) from None
    value = payload.get("content") if isinstance(payload, dict) else None
    if value is None:
        return fallback
    if not isinstance(value, str):
        raise InvalidInputError("Invalid request", "content must be a string")
    return value.encode()


def _from_to(source: str | None, target: str | None) -> dict[str, str]:
    if not source or not target:
        raise InvalidInputError("from and to required")
    return {"from": clean_path(source, "from"), "to": clean_path(target, "to")}


FromQuery = Annotated[str | None, Query(alias="from", description="Source path.")]
ToQuery = Annotated[str | None, Query(alias="to", description="Target path.")]


@router.post("/{sandbox_id}/files/copy", response_model=ExecEnvelope)
async def copy_file(
    sandbox_id: str, caller: Caller, files: Files, source: FromQuery = None, to: ToQuery = None
) -> ExecEnvelope:
    """``cp -r``: into ``to`` if it is a directory; parents of ``to`` are created."""
    args = _from_to(source, to)
    return exec_envelope(await files.run(caller, sandbox_id, "fs.copy", args))


@router.post("/{sandbox_id}/files/move", response_model=ExecEnvelope)
async def move_file(
    sandbox_id: str, caller: Caller, files: Files, source: FromQuery = None, to: ToQuery = None
) -> ExecEnvelope:
    """``mv -f``: into ``to`` if it is a directory; parents of ``to`` are created."""
    args = _from_to(source, to)
    return exec_envelope(await files.run(caller, sandbox_id, "fs.move", args))


@router.post("/{sandbox_id}/files/chmod", response_model=ExecEnvelope)
async def change_mode(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    mode: Annotated[str | None, Query(description="Octal, 3 or 4 digits.")] = None,
) -> ExecEnvelope:
    target = clean_path(path)
    if not mode or not MODE.match(mode):
        raise InvalidInputError("Invalid mode", "must match ^[0-7]{3,4}$")
    args = {"path": target, "mode": int(mode, 8)}
    return exec_envelope(await files.run(caller, sandbox_id, "fs.chmod", args))


@router.get("/{sandbox_id}/files/stat", response_model=ExecEnvelope)
async def stat_file(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """stdout: ``{"path","size","mode":<st_mode hex>,"mtime":<epoch>,"type"}`` (lstat)."""

    def render(body: dict[str, Any], out: bytes) -> ExecOutcome:
        info = {
            "path": text(body["path"]),
            "size": int(body["size"]),
            "mode": f"{int(body['mode']):x}",
            "mtime": int(body["mtime"]),
            "type": text(body["type"]),
        }
        return ExecOutcome(json.dumps(info, ensure_ascii=False, separators=(",", ":")) + "\n")

    args = {"path": clean_path(path)}
    return exec_envelope(await files.run(caller, sandbox_id, "fs.stat", args, render))


@router.get("/{sandbox_id}/files/du", response_model=ExecEnvelope)
async def disk_usage(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """``du -sh``: allocated size, e.g. ``4.0K\\t/path``."""
    target = clean_path(path, default="/root")

    def render(body: dict[str, Any], out: bytes) -> ExecOutcome:
        return ExecOutcome(f"{human_size(int(body['bytes']))}\t{target}\n")

    return exec_envelope(await files.run(caller, sandbox_id, "fs.du", {"path": target}, render))


@router.post("/{sandbox_id}/files/compress", response_model=ExecEnvelope)
async def compress(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    format: Annotated[str | None, Query(description="tar, tar.gz, tar.bz2 or zip.")] = None,
) -> ExecEnvelope:
    """Writes ``<path>.<format>`` next to ``path``, holding ``basename(path)``."""
    target = clean_path(path)
    fmt = format or "tar.gz"
    if fmt not in ARCHIVE_FORMATS:
        raise InvalidInputError("Unsupported format", f"use one of {', '.join(ARCHIVE_FORMATS)}")
    args = {"path": target, "format": fmt}
    return exec_envelope(await files.run(caller, sandbox_id, "fs.compress", args))


@router.post("/{sandbox_id}/files/extract", response_model=ExecEnvelope)
async def extract(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    archive: Annotated[str | None, Query(description="Archive path (type by extension).")] = None,
    dest: Annotated[str | None, Query(description="Default: the archive's directory.")] = None,
) -> ExecEnvelope:
    """Entries escaping ``dest`` are refused and reported (exit code 2)."""
    source = clean_path(archive, "archive")
    if not source.lower().endswith((".zip", *ARCHIVE_SUFFIXES)):
        raise InvalidInputError("Unsupported archive type", "use .tar, .tar.gz/.tgz, .zip, …")
    args = {"archive": source, "dest": clean_path(dest, "dest", default=source.rsplit("/", 1)[0])}

    def render(body: dict[str, Any], out: bytes) -> ExecOutcome:
        problems = [text(p) + "\n" for p in body.get("problems", [])]
        return ExecOutcome("", "".join(problems), 2 if body.get("problemCount") else 0)

    return exec_envelope(await files.run(caller, sandbox_id, "fs.extract", args, render))
