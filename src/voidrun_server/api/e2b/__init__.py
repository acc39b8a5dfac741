"""``/e2b``: the E2B API on our sandboxes, for the E2B SDKs unchanged (docs/e2b.md).

A request that carries ``E2b-Sandbox-Id`` is an in-sandbox call (the SDK's
``E2B_SANDBOX_URL``): it must carry the sandbox's access token (``X-Access-Token``, 401
otherwise) and goes to the port in ``E2b-Sandbox-Port``: envd's (49983) is served here
(``envd.py``), any other is proxied into the sandbox, the code interpreter's (49999) after
``interpreter_hook``. Everything else is the control plane (``control.py``).

modules: connect (Connect framing), protojson, calls (the RPC table), process, filesystem,
files (/files, /health), control (REST), errors (E2B's error shapes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from ...services.sandboxes import SandboxRow
from ...services.traffic_tokens import TrafficTokens
from ..deps import AppContext
from . import control, envd

InterpreterHook = Callable[[SandboxRow], Awaitable[None]]
PREFIX = "/e2b"


async def no_interpreter(_sandbox: SandboxRow) -> None:
    """The default ``interpreter_hook``: the sandbox's port 49999 is proxied as it is."""


class E2BGateway:
    """The ASGI app mounted at ``/e2b``."""

    def __init__(self, parent: FastAPI, ctx: AppContext) -> None:
        self.parent = parent
        self.ctx = ctx
        self.interpreter_hook: InterpreterHook = no_interpreter
        self.control = control.build(ctx, self.tokens)
        self.envd = envd.Envd(self)

    async def tokens(self) -> TrafficTokens:
        """The server's token secret (the preview proxy's; access tokens are its own purpose)."""
        from ..proxy import proxy_of

        return (await proxy_of(self.parent)).tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return
        for name, _ in scope["headers"]:
            if name == b"e2b-sandbox-id":
                await self.envd(scope, receive, send)
                return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        await self.control(scope, receive, send)


def mount(app: FastAPI, ctx: AppContext) -> E2BGateway:
    gateway = E2BGateway(app, ctx)
    app.mount(PREFIX, gateway)
    app.state.e2b = gateway
    return gateway


__all__ = ["E2BGateway", "mount", "no_interpreter"]
