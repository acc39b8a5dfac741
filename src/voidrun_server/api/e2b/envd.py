"""In-sandbox calls: the access token, then envd (port 49983) or the proxy (any other port)."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from ...errors import VoidRunError
from ...services.accounts import Principal
from ...services.e2b import E2BSandboxes
from ...services.e2b_files import E2BFiles, Watcher
from ...services.e2b_processes import E2BProcesses, ProcessTable
from ...services.proxy import Target
from ...services.traffic_tokens import ENVD_PURPOSE
from ..proxy import Preview, proxy_of, serve_target
from . import files, filesystem, process
from .calls import Call, Rpc
from .connect import JSON_TYPE, header, send_json
from .errors import rest_error, rest_of

if TYPE_CHECKING:
    from . import E2BGateway

ENVD_PORT = 49983
INTERPRETER_PORT = 49999
SERVICES: dict[str, dict[str, Rpc]] = {
    "process.Process": process.RPCS,
    "filesystem.Filesystem": filesystem.RPCS,
}
BAD_TOKEN = "invalid or missing access token for this sandbox (X-Access-Token)"


def route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def basic_user(scope: Scope) -> str | None:
    """envd's ``Authorization: Basic base64(user:)``: the user the call acts as."""
    raw = header(scope, b"authorization")
    if raw is None or not raw[:6].lower() == b"basic ":
        return None
    try:
        decoded = base64.b64decode(raw[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


class Envd:
    def __init__(self, gateway: E2BGateway) -> None:
        self.gateway = gateway
        self.table = ProcessTable()
        self.watchers: dict[str, Watcher] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sandbox_id = (header(scope, b"e2b-sandbox-id") or b"").decode("latin-1")
        raw_port = header(scope, b"e2b-sandbox-port") or str(ENVD_PORT).encode()
        token = (header(scope, b"x-access-token") or b"").decode("latin-1")
        traffic = (header(scope, b"e2b-traffic-access-token") or b"").decode("latin-1")
        try:
            if not raw_port.isdigit() or not 0 < int(raw_port) < 65536:
                await self._refuse(scope, receive, send, 400, "invalid E2b-Sandbox-Port")
                return
            tokens = await self.gateway.tokens()
            allowed = bool(token) and tokens.check(sandbox_id, token, ENVD_PURPOSE)
            if not allowed and traffic and int(raw_port) != ENVD_PORT:
                # the sandbox's other ports also open to its traffic token (the code
                # interpreter SDK sends only that one on some calls)
                allowed = tokens.check(sandbox_id, traffic)
            if not allowed:
                await self._refuse(scope, receive, send, 401, BAD_TOKEN)
                return
            service = self.gateway.ctx.sandbox_service()
            caller = await E2BSandboxes(service).owner(sandbox_id)
        except VoidRunError as exc:
            if scope["type"] == "http":
                await rest_of(exc)(scope, receive, send)
            return
        if caller is None:
            message = f"The sandbox {sandbox_id} was not found"
            await self._refuse(scope, receive, send, 502, message)
            return
        port = int(raw_port)
        if port != ENVD_PORT:
            await self._proxy(scope, receive, send, sandbox_id, caller.org_id, port)
            return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        call = Call(
            caller=caller,
            sandbox_id=sandbox_id,
            user=basic_user(scope),
            processes=E2BProcesses(service, self.table),
            files=E2BFiles(service, self.watchers),
        )
        await self._envd(call, scope, receive, send)

    async def _envd(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        path = route_path(scope)
        if path == "/health":
            await files.health(scope, receive, send)
            return
        if path == "/files":
            await files.files(call, scope, receive, send)
            return
        service, _, method = path.lstrip("/").partition("/")
        rpc = SERVICES.get(service, {}).get(method)
        if rpc is None or scope["method"] != "POST":
            body = {"code": "unimplemented", "message": f"{path} is not implemented"}
            status = 404 if rpc is None else 405
            await _json(send, status, body)
            return
        limit = self.gateway.ctx.settings.max_json_body_bytes
        error = await rpc.serve(call, scope, receive, send, limit)
        if error is not None and error.code == "deadline_exceeded" and call.started is not None:
            # E2B kills a process whose Start outlived its timeout
            try:
                await call.processes.kill(call.caller, call.sandbox_id, call.started)
            except VoidRunError:
                pass  # already gone

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, sandbox_id: str, org_id: str, port: int
    ) -> None:
        try:
            proxy = await proxy_of(self.gateway.parent)
            if port == INTERPRETER_PORT:
                row = await proxy.sandboxes.get(_org(org_id), sandbox_id)
                await self.gateway.interpreter_hook(row)
            raw = scope.get("raw_path") or scope["path"].encode()
            below = route_path({**scope, "path": raw.split(b"?", 1)[0].decode("latin-1")})
            preview = Preview(sandbox_id, port, below or "/", scope.get("root_path", ""))
            target = Target(sandbox_id, org_id, port, public=False)
            await serve_target(scope, receive, send, proxy, target, preview)
        except VoidRunError as exc:
            if scope["type"] == "http":
                await rest_of(exc)(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, message: str
    ) -> None:
        if scope["type"] == "http":
            await rest_error(status, message)(scope, receive, send)
        else:
            await send({"type": "websocket.close", "code": 1008})


def _org(org_id: str) -> Principal:
    return Principal(key_id="", org_id=org_id, user_id="")


async def _json(send: Send, status: int, body: dict[str, str]) -> None:
    await send_json(send, status, body, JSON_TYPE)
