"""The MCP server's sandbox tools: create, list, get, kill; commands, code and processes.

Each tool is a thin layer over the services the HTTP routes use (never SQL, never the agent
protocol), called as the caller that ``api/mcp_server.py`` authenticated: every sandbox id is
looked up in the caller's org, so another org's id is "Sandbox not found", as the API says it.
A ``VoidRunError`` becomes a tool error (``isError``) carrying the API's message and details
(``tool_errors``); the files and previews tools are in ``mcp_files.py``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import Field
from starlette.requests import Request

from ..agentclient import ExecResult
from ..errors import InvalidInputError, VoidRunError
from ..schemas.exec import ExecRequest
from ..schemas.processes import CommandRunRequest
from ..schemas.sandboxes import SandboxCreate
from ..services import exec as exec_service
from ..services.accounts import Principal
from ..services.commands import CommandService
from ..services.exec import ExecService
from ..services.interpreter import Execution
from ..services.sandboxes import SandboxService
from .deps import AppContext, app_context
from .interpreter import interpreter_of
from .routes.sandboxes import public

PRINCIPAL_KEY = "voidrun.mcp.principal"

SandboxId = Annotated[str, Field(description="The sandbox's id (24 hex digits).")]
Command = Annotated[str, Field(description="Run with bash -c in the sandbox.")]
Timeout = Annotated[
    int | None,
    Field(
        description=(
            "Seconds: 1..300, default 30, when waiting for the command; a background command "
            "is killed after this many seconds (0..900, absent or 0: never)."
        )
    ),
]
Background = Annotated[
    bool, Field(description="Start the command and return its pid at once, without waiting.")
]
Language = Literal["python", "javascript", "node", "bash", "sh"]


class Caller:
    """The app context and the authenticated principal of the HTTP request a tool serves."""

    def __init__(self, ctx: Context) -> None:
        request = ctx.request_context.request
        if not isinstance(request, Request) or PRINCIPAL_KEY not in request.scope:
            raise ToolError("authentication required (X-API-Key or Bearer token)")
        self.request = request
        self.principal: Principal = request.scope[PRINCIPAL_KEY]
        self.app: AppContext = app_context(request)

    @property
    def sandboxes(self) -> SandboxService:
        return self.app.sandbox_service()


def problem(exc: VoidRunError) -> str:
    """The API's error body as one line: ``message: details``."""
    return f"{exc.message}: {exc.details}" if exc.details else exc.message


@asynccontextmanager
async def tool_errors() -> AsyncIterator[None]:
    """Our exceptions as tool errors with the API's text (the SDK reports anything else as a
    bare 'Error executing tool', and logs it)."""
    try:
        yield
    except VoidRunError as exc:
        raise ToolError(problem(exc)) from exc


def as_json(value: Any) -> str:
    return json.dumps(value, indent=1, default=str)


# -- sandboxes -------------------------------------------------------------------------------


async def create_sandbox(
    ctx: Context,
    image: Annotated[str | None, Field(description="Image `name` or `name:tag`.")] = None,
    isolation: Annotated[
        str | None, Field(description="namespace, gvisor or microvm; default the server's.")
    ] = None,
    env: Annotated[
        dict[str, str] | None, Field(description="Environment variables of the sandbox.")
    ] = None,
    cpu: Annotated[int | None, Field(description="Cores, 1..8; default 1.")] = None,
    mem: Annotated[int | None, Field(description="MiB, 1024..16384; default 1024.")] = None,
    name: Annotated[str | None, Field(description="DNS-1123 name; default mcp-<random>.")] = None,
) -> str:
    """Create a sandbox and wait until it runs; the answer starts with its id."""
    caller = Caller(ctx)
    async with tool_errors():
        body = SandboxCreate(
            name=name or f"mcp-{secrets.token_hex(4)}",
            image=image,
            isolation=isolation,
            env_vars=env,
            cpu=cpu,
            mem=mem,
        )
        row = await caller.sandboxes.create(caller.principal, body)
    return f"{row.id}\n" + as_json(_sandbox(row))


async def list_sandboxes(
    ctx: Context,
    page: Annotated[int, Field(ge=1, description="Page number, from 1.")] = 1,
    limit: Annotated[int, Field(ge=1, le=100, description="Page size.")] = 20,
) -> str:
    """The caller's org's sandboxes (deleted ones left out), newest first."""
    caller = Caller(ctx)
    async with tool_errors():
        rows, total = await caller.sandboxes.list(caller.principal, page, limit, {})
    return as_json({"total": total, "sandboxes": [_sandbox(row) for row in rows]})


async def get_sandbox(ctx: Context, sandbox_id: SandboxId) -> str:
    """One sandbox: status, image, resources, declared ports, network policy."""
    caller = Caller(ctx)
    async with tool_errors():
        row = await caller.sandboxes.get(caller.principal, sandbox_id)
    return as_json(_sandbox(row))


async def kill_sandbox(ctx: Context, sandbox_id: SandboxId) -> str:
    """Delete a sandbox: its processes end and its disk is removed."""
    caller = Caller(ctx)
    async with tool_errors():
        await caller.sandboxes.delete(caller.principal, sandbox_id)
    return f"Sandbox {sandbox_id} deleted"


def _sandbox(row: Any) -> dict[str, Any]:
    wire: dict[str, Any] = public(row, sdk=False).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return wire


# -- commands and code -----------------------------------------------------------------------


async def execute_command(
    ctx: Context,
    sandbox_id: SandboxId,
    command: Command,
    timeout: Timeout = None,  # noqa: ASYNC109 - the tool's argument name
    background: Background = False,
    cwd: Annotated[str | None, Field(description="Working directory.")] = None,
) -> str:
    """Run a shell command: its exit code, stdout and stderr; with background=true its pid
    (see list_processes, kill_process)."""
    caller = Caller(ctx)
    async with tool_errors():
        if background:
            commands = CommandService(caller.sandboxes)
            body = CommandRunRequest(command=command, timeout=timeout, cwd=cwd)
            info = await commands.run(caller.principal, sandbox_id, body)
            return as_json({"pid": info.pid, "command": info.command, "running": info.running})
        request = ExecRequest(command=command, timeout=timeout, cwd=cwd)
        result = await _exec(caller, sandbox_id, request)
    return _exec_text(result, request.timeout)


async def run_code(
    ctx: Context,
    sandbox_id: SandboxId,
    code: Annotated[str, Field(description="The program's text.")],
    language: Annotated[Language, Field(description="Its language.")] = "python",
    timeout: Annotated[  # noqa: ASYNC109 - the tool's argument name
        int | None, Field(description="Seconds, 1..300; default 60.")
    ] = None,
) -> str:
    """Run code in the sandbox's stateful interpreter (one per language: variables, imports
    and functions persist between calls, as in a notebook): its stdout, stderr, results (the
    value of the last expression, displays, plots) and error (name, value, traceback)."""
    caller = Caller(ctx)
    seconds = timeout or 60
    async with tool_errors():
        if not 1 <= seconds <= exec_service.MAX_TIMEOUT:
            raise InvalidInputError(
                "Invalid timeout", f"must be between 1 and {exec_service.MAX_TIMEOUT} seconds"
            )
        service = await interpreter_of(caller.request.app)
        execution = await service.execute(
            caller.principal, sandbox_id, code, language=LANGUAGES[language], timeout=seconds
        )
    return as_json(_execution(execution))


LANGUAGES = {
    "python": "python",
    "javascript": "javascript",
    "node": "javascript",
    "bash": "bash",
    "sh": "bash",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _execution(execution: Execution) -> dict[str, Any]:
    """What a model reads: text, with images and other binary formats named, not inlined."""
    out: dict[str, Any] = {
        "stdout": "".join(execution.stdout),
        "stderr": "".join(execution.stderr),
    }
    results = []
    for result in execution.results:
        shown: dict[str, Any] = {
            k: result[k] for k in ("text", "html", "markdown", "json") if k in result
        }
        others = sorted(k for k in result if k not in shown and k != "is_main_result")
        if others:
            shown["formats"] = others
        if result.get("is_main_result"):
            shown["isMainResult"] = True
        results.append(shown)
    if results:
        out["results"] = results
    if execution.error is not None:
        error = execution.error
        out["error"] = {
            "name": error.name,
            "value": error.value,
            "traceback": ANSI.sub("", error.traceback),
        }
    return out


async def _exec(caller: Caller, sandbox_id: str, request: ExecRequest) -> ExecResult:
    service = ExecService(caller.app.settings, caller.sandboxes)
    return await service.run(caller.principal, sandbox_id, exec_service.validate(request))


def _exec_text(result: ExecResult, timeout: int | None) -> str:
    out: dict[str, Any] = {
        "exitCode": result.exit_code,
        "stdout": result.stdout_text,
        "stderr": result.stderr_text,
    }
    if result.timed_out:
        out["error"] = f"timed out after {timeout or exec_service.DEFAULT_TIMEOUT}s"
    if result.stdout_truncated or result.stderr_truncated:
        out["truncated"] = True
    return as_json(out)


# -- processes -------------------------------------------------------------------------------


async def list_processes(ctx: Context, sandbox_id: SandboxId) -> str:
    """The background commands started in the sandbox: pid, command, running, exit code."""
    caller = Caller(ctx)
    async with tool_errors():
        infos = await CommandService(caller.sandboxes).list(caller.principal, sandbox_id)
    return as_json(
        [
            {"pid": i.pid, "command": i.command, "running": i.running, "exitCode": i.exit_code}
            for i in infos
        ]
    )


async def kill_process(
    ctx: Context,
    sandbox_id: SandboxId,
    pid: Annotated[int, Field(description="A pid from execute_command or list_processes.")],
) -> str:
    """Kill a background command (and its process group)."""
    caller = Caller(ctx)
    async with tool_errors():
        await CommandService(caller.sandboxes).kill(caller.principal, sandbox_id, pid)
    return f"Process {pid} killed"


TOOLS: list[Callable[..., Awaitable[str]]] = [
    create_sandbox,
    list_sandboxes,
    get_sandbox,
    kill_sandbox,
    execute_command,
    run_code,
    list_processes,
    kill_process,
]


def register(server: MCPServer[Any], tools: list[Callable[..., Awaitable[str]]]) -> None:
    for tool in tools:
        server.add_tool(tool, structured_output=False)
