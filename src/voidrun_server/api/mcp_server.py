"""The MCP server (``docs/mcp.md``): the sandbox tools over streamable HTTP at ``/mcp`` and
``/api/mcp`` (CONTRACT §C.9), built on the official ``mcp`` SDK.

Stateless mode, JSON responses: every POST carries one JSON-RPC message and gets its answer in
the response body; no session id, no server-held stream. Any process (or node) serving the API
can answer any MCP request, nothing is lost when one restarts, and each request is
authenticated anew, so a revoked key stops working at the very next call. The tools need no
server-to-client requests (sampling, elicitation) that a session would carry.

Before the SDK sees a request, :class:`McpEndpoint` checks its Host and Origin
(``mcp_hosts.py``; the SDK checks them again) and its API key (``X-API-Key`` or
``Authorization: Bearer``, through the same key cache as the API): a refusal is our error
envelope (421/403/401/400), not a JSON-RPC message. The principal rides in the ASGI scope to
the tools (``mcp_tools.Caller``). The SDK's session manager runs in a task of the app's lifespan
task group (:meth:`McpEndpoint.run`), started before the first request and cancelled with the
group; were it to fail, ``/mcp`` answers 503 and the rest of the API goes on.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import anyio.abc
from mcp.server.mcpserver import MCPServer
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecurityMiddleware
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .. import __version__
from ..config import Settings
from ..errors import AuthenticationError, InvalidInputError, ServiceUnavailableError
from . import mcp_files, mcp_tools
from .deps import NO_KEY, app_context, authenticate
from .errors import error_response
from .mcp_hosts import transport_security

log = logging.getLogger(__name__)

PATHS = ("/mcp", "/api/mcp")
QUIET_LOGGERS = ("mcp.server.streamable_http", "mcp.server.streamable_http_manager")
# Stateless: a GET would open a stream that never carries anything, and there is no session to
# DELETE; both are 405, as the transport's spec allows.
METHODS = ["POST"]
INSTRUCTIONS = (
    "Sandboxes of a self-hosted VoidRun server: create one (create_sandbox returns its id), "
    "run commands and code in it, read and write its files, open previews of servers in it, "
    "and kill it when done. Everything is scoped to the organisation of the API key."
)


def build_server() -> MCPServer[Any]:
    # MCPServer() calls logging.basicConfig with a handler of its own: on a root logger without
    # handlers yet (create_app before logs.configure) it would take over the server's log
    # format. The root logger is put back as it was.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    server: MCPServer[Any] = MCPServer("voidrun", version=__version__, instructions=INSTRUCTIONS)
    root.handlers[:], root.level = handlers, level
    # The transport logs every stateless request at INFO ("Terminating session: None").
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    mcp_tools.register(server, [*mcp_tools.TOOLS, *mcp_files.TOOLS])
    return server


class McpEndpoint:
    """The ASGI app behind both routes: refusals first, then the SDK's session manager."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server = build_server()
        self.security = transport_security(settings)
        self.guard = TransportSecurityMiddleware(self.security)
        self.manager: StreamableHTTPSessionManager | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The SDK's session manager for as long as this task lives (in the lifespan's task
        group); a new one per lifespan, as a manager runs only once."""
        # The Starlette app this returns is not used: only the session manager it sets up.
        self.server.streamable_http_app(
            json_response=True,
            stateless_http=True,
            transport_security=self.security,
            max_request_body_size=self.settings.max_json_body_bytes,
        )
        manager = self.server.session_manager
        started = False
        try:
            async with manager.run():
                self.manager = manager
                task_status.started()
                started = True
                await anyio.sleep_forever()
        except Exception:  # never into the lifespan's task group (services/background.py)
            log.exception("the MCP session manager failed; /mcp answers 503 until a restart")
        finally:
            self.manager = None
            if not started:
                task_status.started()  # the API starts all the same

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        refused = await self.guard.validate_request(request, is_post=False)
        if refused is not None:
            await self._refuse(scope, receive, send, refused.status_code, request)
            return
        scope[mcp_tools.PRINCIPAL_KEY] = await authenticate(app_context(request), api_key(request))
        manager = self.manager
        if manager is None:
            raise ServiceUnavailableError("The MCP server is not running", "the server is starting")
        await manager.handle_request(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, request: Request
    ) -> None:
        if status == 421:
            host = request.headers.get("host", "")
            error = f"Host {host!r} is not one of this server's names"
            details = "add it to VOIDRUN_MCP_ALLOWED_HOSTS (docs/mcp.md)"
        else:
            origin = request.headers.get("origin", "")
            error = f"Origin {origin!r} is not allowed"
            details = "add it to VOIDRUN_CORS_ORIGINS (docs/mcp.md)"
        response = error_response(status, error, details)
        await response(scope, receive, send)


def api_key(request: Request) -> str:
    """The key from ``X-API-Key`` or ``Authorization: Bearer`` (one of them, not both)."""
    header = request.headers.get("x-api-key", "")
    authorization = request.headers.get("authorization", "")
    scheme, _, bearer = authorization.partition(" ")
    bearer = bearer.strip() if scheme.lower() == "bearer" else ""
    if header and bearer:
        raise InvalidInputError("provide either X-API-Key or Bearer token, not both")
    plain = header or bearer
    if not plain:
        raise AuthenticationError(NO_KEY)
    return plain


def routes(endpoint: McpEndpoint) -> list[Route]:
    return [
        Route(path, endpoint=endpoint, methods=METHODS, include_in_schema=False) for path in PATHS
    ]
