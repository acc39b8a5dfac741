"""The MCP server's file and preview tools (the rest are in ``mcp_tools.py``, same rules)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated
from urllib.parse import urlsplit

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field

from ..schemas.sandboxes import PortSpec
from ..services import file_args
from ..services.file_results import ExecOutcome
from ..services.files import FileService
from .mcp_tools import Caller, SandboxId, as_json, tool_errors
from .proxy import proxy_service
from .routes.file_streams import watch_registry
from .routes.proxy import preview_url

READ_LIMIT = 1024 * 1024
TOKEN_QUERY = "voidrun_token"

FilePath = Annotated[str, Field(description="Absolute path in the sandbox.")]
Port = Annotated[int, Field(ge=1, le=65535, description="A TCP port in the sandbox.")]


async def _files(caller: Caller) -> FileService:
    return FileService(caller.sandboxes, await watch_registry(caller.request))


async def read_file(ctx: Context, sandbox_id: SandboxId, path: FilePath) -> str:
    """A text file's content (UTF-8; at most 1 MiB: use execute_command for more)."""
    caller = Caller(ctx)
    async with tool_errors():
        files = await _files(caller)
        async with files.download(caller.principal, sandbox_id, path) as download:
            if download.size > READ_LIMIT:
                raise ToolError(
                    f"File too large: {download.size} bytes; read_file returns at most "
                    f"{READ_LIMIT} (read parts with execute_command, e.g. head -c)"
                )
            data = b"".join([chunk async for chunk in download.chunks])
    return data.decode("utf-8", errors="replace")


async def write_file(
    ctx: Context,
    sandbox_id: SandboxId,
    path: FilePath,
    content: Annotated[str, Field(description="The whole new content, as text (UTF-8).")],
) -> str:
    """Write a text file (replaced atomically; missing parent directories are made)."""
    caller = Caller(ctx)
    data = content.encode()

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    async with tool_errors():
        target = file_args.file_target(path)
        files = await _files(caller)
        size = await files.upload(caller.principal, sandbox_id, target, chunks())
    return f"Wrote {size} bytes to {target}"


async def list_files(
    ctx: Context,
    sandbox_id: SandboxId,
    path: Annotated[str, Field(description="A directory in the sandbox.")] = "/root",
) -> str:
    """A directory's entries: name, path, size, mode, whether a directory, modification time."""
    caller = Caller(ctx)
    async with tool_errors():
        files = await _files(caller)
        items = await files.list_dir(caller.principal, sandbox_id, path)
    return as_json([item.model_dump(mode="json", by_alias=True) for item in items])


async def create_directory(ctx: Context, sandbox_id: SandboxId, path: FilePath) -> str:
    """Make a directory and its missing parents."""
    caller = Caller(ctx)
    async with tool_errors():
        files = await _files(caller)
        outcome = await files.mkdir(caller.principal, sandbox_id, path)
    return _done(outcome, f"Created {path}")


async def delete_file(ctx: Context, sandbox_id: SandboxId, path: FilePath) -> str:
    """Delete a file or a directory with everything in it (a missing path is no error)."""
    caller = Caller(ctx)
    async with tool_errors():
        files = await _files(caller)
        outcome = await files.delete(caller.principal, sandbox_id, path)
    return _done(outcome, f"Deleted {path}")


def _done(outcome: ExecOutcome, message: str) -> str:
    if outcome.exit_code != 0:
        raise ToolError(outcome.stderr.strip() or f"failed with exit code {outcome.exit_code}")
    return message


async def get_preview_url(ctx: Context, sandbox_id: SandboxId, port: Port) -> str:
    """The URL a person opens to reach an HTTP server listening on `port` in the sandbox.

    A port not declared yet is declared (private, http; a sandbox has at most 4); a private
    port's URL carries the sandbox's traffic token, which opens its ports only."""
    caller = Caller(ctx)
    async with tool_errors():
        sandboxes = caller.sandboxes
        # a data-plane call like the others: a paused sandbox wakes, a deleted one is refused
        row = (await sandboxes.ensure_running(caller.principal, sandbox_id)).row
        declared = next((p for p in row.ports if p.get("port") == port), None)
        if declared is None:
            ports = [PortSpec.model_validate(p) for p in row.ports]
            ports.append(PortSpec(protocol="http", port=port))
            row = await sandboxes.update(caller.principal, sandbox_id, None, None, ports)
            declared = next(p for p in row.ports if p.get("port") == port)
        if declared.get("protocol", "http") != "http":
            raise ToolError(f"Port {port} is declared tcp: previews serve http ports only")
        url = preview_url(caller.app.settings, row.id, port, row.name)
        if declared.get("public") is not True:
            token = (await proxy_service(caller.request)).token_for(row.id)
            joiner = "&" if urlsplit(url).query else "?"
            url = f"{url}{joiner}{TOKEN_QUERY}={token}"
    return url


TOOLS: list[Callable[..., Awaitable[str]]] = [
    read_file,
    write_file,
    list_files,
    create_directory,
    delete_file,
    get_preview_url,
]
