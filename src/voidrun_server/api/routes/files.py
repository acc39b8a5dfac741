"""File System routes under /api/sandboxes/{id}/ (CONTRACT §A.6, §B.6).

One ``FileService`` operation per route (``services/files.py``): it checks the arguments (400
before the sandbox is touched) and reports failures of the operation itself in the exec
envelope. Uploads, downloads and watches stream: neither side ever holds a whole file
(``file_streams.py``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from ...schemas.files import (
    CreateFileBody,
    ExecData,
    ExecEnvelope,
    FileList,
    FileListEnvelope,
)
from ...services.file_results import ExecOutcome
from ..deps import Caller
from . import file_streams
from .file_streams import Files, PathQuery

router = APIRouter(prefix="/api/sandboxes", tags=["File System"])
router.include_router(file_streams.router)


def exec_envelope(outcome: ExecOutcome) -> ExecEnvelope:
    data = ExecData(stdout=outcome.stdout, stderr=outcome.stderr, exit_code=outcome.exit_code)
    return ExecEnvelope(message="ok", data=data)


@router.get("/{sandbox_id}/files", response_model=FileListEnvelope)
async def list_files(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> FileListEnvelope:
    """Directory listing (``lstat``: symlinks are listed as links), sorted by name."""
    listing = FileList(files=await files.list_dir(caller, sandbox_id, path))
    return FileListEnvelope(message="ok", data=listing)


@router.delete("/{sandbox_id}/files", response_model=ExecEnvelope)
async def delete_file(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """``rm -rf``: recursive; a missing path is success."""
    return exec_envelope(await files.delete(caller, sandbox_id, path))


@router.get("/{sandbox_id}/files/head-tail", response_model=ExecEnvelope)
async def head_tail(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    lines: Annotated[str | None, Query(description="1..10000, default 10.")] = None,
    head: Annotated[str | None, Query(description="Only `true` means head.")] = None,
) -> ExecEnvelope:
    return exec_envelope(await files.head_tail(caller, sandbox_id, path, lines, head))


@router.get("/{sandbox_id}/files/search", response_model=ExecEnvelope)
async def search_files(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    pattern: Annotated[str | None, Query(description="Matched as *pattern* on names.")] = None,
) -> ExecEnvelope:
    """``find <path> -name '*<pattern>*' -type f | head -100``."""
    return exec_envelope(await files.search(caller, sandbox_id, path, pattern))


@router.post("/{sandbox_id}/files/mkdir", response_model=ExecEnvelope)
async def make_directory(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """``mkdir -p``."""
    return exec_envelope(await files.mkdir(caller, sandbox_id, path))


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
    content_type = request.headers.get("content-type", "")
    created = await files.create(caller, sandbox_id, path, content, request.body, content_type)
    return exec_envelope(created)


FromQuery = Annotated[str | None, Query(alias="from", description="Source path.")]
ToQuery = Annotated[str | None, Query(alias="to", description="Target path.")]


@router.post("/{sandbox_id}/files/copy", response_model=ExecEnvelope)
async def copy_file(
    sandbox_id: str, caller: Caller, files: Files, source: FromQuery = None, to: ToQuery = None
) -> ExecEnvelope:
    """``cp -r``: into ``to`` if it is a directory; parents of ``to`` are created."""
    return exec_envelope(await files.copy(caller, sandbox_id, source, to))


@router.post("/{sandbox_id}/files/move", response_model=ExecEnvelope)
async def move_file(
    sandbox_id: str, caller: Caller, files: Files, source: FromQuery = None, to: ToQuery = None
) -> ExecEnvelope:
    """``mv -f``: into ``to`` if it is a directory; parents of ``to`` are created."""
    return exec_envelope(await files.move(caller, sandbox_id, source, to))


@router.post("/{sandbox_id}/files/chmod", response_model=ExecEnvelope)
async def change_mode(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    mode: Annotated[str | None, Query(description="Octal, 3 or 4 digits.")] = None,
) -> ExecEnvelope:
    return exec_envelope(await files.chmod(caller, sandbox_id, path, mode))


@router.get("/{sandbox_id}/files/stat", response_model=ExecEnvelope)
async def stat_file(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """stdout: ``{"path","size","mode":<st_mode hex>,"mtime":<epoch>,"type"}`` (lstat)."""
    return exec_envelope(await files.stat(caller, sandbox_id, path))


@router.get("/{sandbox_id}/files/du", response_model=ExecEnvelope)
async def disk_usage(
    sandbox_id: str, caller: Caller, files: Files, path: PathQuery = None
) -> ExecEnvelope:
    """``du -sh``: allocated size, e.g. ``4.0K\\t/path``."""
    return exec_envelope(await files.disk_usage(caller, sandbox_id, path))


@router.post("/{sandbox_id}/files/compress", response_model=ExecEnvelope)
async def compress(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    path: PathQuery = None,
    format: Annotated[str | None, Query(description="tar, tar.gz, tar.bz2 or zip.")] = None,
) -> ExecEnvelope:
    """Writes ``<path>.<format>`` next to ``path``, holding ``basename(path)``."""
    return exec_envelope(await files.compress(caller, sandbox_id, path, format))


@router.post("/{sandbox_id}/files/extract", response_model=ExecEnvelope)
async def extract(
    sandbox_id: str,
    caller: Caller,
    files: Files,
    archive: Annotated[str | None, Query(description="Archive path (type by extension).")] = None,
    dest: Annotated[str | None, Query(description="Default: the archive's directory.")] = None,
) -> ExecEnvelope:
    """Entries escaping ``dest`` are refused and reported (exit code 2)."""
    return exec_envelope(await files.extract(caller, sandbox_id, archive, dest))
