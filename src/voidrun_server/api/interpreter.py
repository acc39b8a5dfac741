"""The app's code interpreter service (``services/interpreter.py``), for the routes that run
code in a sandbox's stateful interpreter: the E2B dispatcher (port 49999) and MCP's
``run_code``. Made on first use, like the preview proxy it sends through."""

from __future__ import annotations

from starlette.requests import HTTPConnection

from ..services.interpreter import InterpreterService
from .proxy import proxy_service

__all__ = ["interpreter_service"]


async def interpreter_service(connection: HTTPConnection) -> InterpreterService:
    proxy = await proxy_service(connection)
    state = connection.app.state
    current: InterpreterService | None = getattr(state, "code_interpreter", None)
    if current is None or current.proxy is not proxy:
        state.code_interpreter = current = InterpreterService(proxy.sandboxes, proxy)
    return current
