"""E2B's error shapes: ``{"code": <HTTP status>, "message"}`` on REST routes and ``/files``,
Connect's ``{"code": "<name>", "message"}`` on RPCs. Every failure is one of them, never a
VoidRun envelope and never a bare 500."""

from __future__ import annotations

import logging

from starlette.responses import JSONResponse

from ... import errors
from ...agentclient import AgentError
from ..errors import status_for
from .connect import RpcError

log = logging.getLogger(__name__)

CODE_OF_STATUS = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    408: "deadline_exceeded",
    409: "already_exists",
    413: "resource_exhausted",
    429: "resource_exhausted",
    502: "unavailable",
    503: "unavailable",
    504: "deadline_exceeded",
    507: "resource_exhausted",
    529: "resource_exhausted",
}


def text_of(exc: errors.VoidRunError) -> str:
    return f"{exc.message}: {exc.details}" if exc.details else exc.message


def rest_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def rest_of(exc: Exception) -> JSONResponse:
    if isinstance(exc, errors.VoidRunError):
        status = status_for(exc)
        if status >= 500:
            log.warning("e2b request failed: %s", exc)
        return rest_error(status, text_of(exc))
    if isinstance(exc, AgentError):
        return rest_error(502, f"sandbox agent: {exc}")
    log.exception("e2b request failed", exc_info=exc)
    return rest_error(500, "internal error")


def rpc_of(exc: BaseException) -> RpcError | None:
    """The Connect error for an exception (None: not ours to translate)."""
    if isinstance(exc, errors.VoidRunError):
        status = status_for(exc)
        if status >= 500 and status not in (502, 503, 504, 507, 529):
            log.warning("e2b rpc failed: %s", exc)
        return RpcError(CODE_OF_STATUS.get(status, "internal"), text_of(exc))
    if isinstance(exc, AgentError):
        return RpcError("unavailable", f"sandbox agent: {exc}")
    if isinstance(exc, Exception):
        log.exception("e2b rpc failed", exc_info=exc)
        return RpcError("internal", "internal error")
    return None
