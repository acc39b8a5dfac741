"""The app's code interpreter service (``services/interpreter.py``), for the routes that run
code in a sandbox's stateful interpreter: the E2B gateway (port 49999, through
``interpreter_hook``) and MCP's ``run_code``. Made on first use, like the preview proxy it
sends through."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import HTTPConnection

from ..services.accounts import Principal
from ..services.interpreter import InterpreterService
from ..services.sandboxes import SandboxRow
from .proxy import proxy_of

__all__ = ["e2b_hook", "interpreter_of", "interpreter_service"]


async def interpreter_service(connection: HTTPConnection) -> InterpreterService:
    return await interpreter_of(connection.app)


async def interpreter_of(app: Any) -> InterpreterService:
    """``interpreter_service`` of an app (again after a lifespan restart, with its proxy)."""
    proxy = await proxy_of(app)
    state = app.state
    current: InterpreterService | None = getattr(state, "code_interpreter", None)
    if current is None or current.proxy is not proxy:
        state.code_interpreter = current = InterpreterService(proxy.sandboxes, proxy)
    return current


def e2b_hook(app: Any) -> Callable[[SandboxRow], Awaitable[None]]:
    """The E2B gateway's ``interpreter_hook``: before a request to port 49999 is proxied, the
    sandbox's interpreter runs (started if need be)."""

    async def hook(row: SandboxRow) -> None:
        owner = Principal(key_id="", org_id=row.org_id, user_id="")
        await (await interpreter_of(app)).ensure_running(owner, row.id)

    return hook
