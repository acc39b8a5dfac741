"""The one table from exceptions to HTTP status codes, and the handlers that apply it.

Every error body is ``{"error": ..., "details"?: ...}`` (CONTRACT §1.4). Classes are looked up
along the MRO, so a subclass inherits its parent's status unless it has a row of its own.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.VoidRunError], int] = {
    errors.InvalidInputError: 400,
    errors.AuthenticationError: 401,
    errors.PermissionDeniedError: 403,
    errors.QuotaExceededError: 403,
    errors.NotFoundError: 404,
    errors.ConflictError: 409,
    errors.PayloadTooLargeError: 413,
    errors.UriTooLongError: 414,
    errors.InsufficientStorageError: 507,
    errors.SandboxUnavailableError: 502,
    errors.ServiceUnavailableError: 503,
    errors.OperationFailedError: 500,
    errors.DeadlineExceededError: 504,
    errors.CapacityError: 529,
    errors.TooManyConnectionsError: 429,
    errors.RequestTimeoutError: 408,
    errors.VoidRunError: 500,
}


def status_for(exc: errors.VoidRunError) -> int:
    for cls in type(exc).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


def error_response(status: int, error: str, details: str | None = None) -> JSONResponse:
    body: dict[str, str] = {"error": error}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status)


def _describe_validation(exc: RequestValidationError) -> tuple[str, str]:
    problems = []
    for err in exc.errors():
        location = [str(part) for part in err.get("loc", ()) if part not in ("body", "query")]
        where = ".".join(location)
        if err.get("type") == "json_invalid":
            return "Invalid JSON body", str(err.get("ctx", {}).get("error", err.get("msg", "")))
        problems.append(f"{where}: {err.get('msg', 'invalid')}" if where else err.get("msg", ""))
    return "Invalid request", "; ".join(problems)


async def _voidrun_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.VoidRunError)
    status = status_for(exc)
    if status >= 500:
        log.warning("request failed: %s", exc)
    return error_response(status, exc.message, exc.details)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error, details = _describe_validation(exc)
    return error_response(400, error, details)


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    response = error_response(exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "Internal server error")


def install(app: FastAPI) -> None:
    app.add_exception_handler(errors.VoidRunError, _voidrun_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
