"""The E2B control plane (``/e2b`` without ``E2b-Sandbox-Id``): sandboxes through
``services/e2b.py``, answered in E2B's shapes. A small FastAPI app of its own, so that its
errors are E2B's (``{"code", "message"}``) and it stays out of the VoidRun OpenAPI document."""

from __future__ import annotations

import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ...agentclient import AgentError
from ...errors import AuthenticationError, InvalidInputError, VoidRunError
from ...schemas import e2b as wire
from ...schemas.sandboxes import NetworkSpec
from ...services import e2b as service
from ...services.accounts import Principal
from ...services.e2b import E2BSandboxes
from ...services.sandboxes import SandboxRow
from ...services.traffic_tokens import ENVD_PURPOSE, TrafficTokens
from ..deps import AppContext, authenticate
from ..errors import _describe_validation
from .errors import rest_error, rest_of

ENVD_VERSION = "0.5.7"  # the feature gates of the SDKs this gateway implements (docs/e2b.md)
CLIENT_ID = "voidrun"
NO_KEY = "authentication required: send your VoidRun API key as X-API-KEY"

Tokens = Callable[[], Awaitable[TrafficTokens]]


async def caller(request: Request) -> Principal:
    key = request.headers.get("x-api-key", "")
    if not key:
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    if not key:
        raise AuthenticationError(NO_KEY)
    ctx: AppContext = request.app.state.ctx
    return await authenticate(ctx, key)


async def sandboxes(request: Request) -> E2BSandboxes:
    ctx: AppContext = request.app.state.ctx
    return E2BSandboxes(ctx.sandbox_service())


async def tokens(request: Request) -> TrafficTokens:
    made: TrafficTokens = await request.app.state.tokens()
    return made


Caller = Annotated[Principal, Depends(caller)]
Service = Annotated[E2BSandboxes, Depends(sandboxes)]
AccessTokens = Annotated[TrafficTokens, Depends(tokens)]


def _created(row: SandboxRow, keys: TrafficTokens) -> dict[str, Any]:
    out = wire.SandboxOut(
        template_id=row.image,
        sandbox_id=row.id,
        client_id=CLIENT_ID,
        envd_version=ENVD_VERSION,
        alias=row.image,
        envd_access_token=keys.token_for(row.id, ENVD_PURPOSE),
        traffic_access_token=keys.token_for(row.id),  # the preview token: ports only
    )
    return out.model_dump(by_alias=True, exclude_none=True)


def _listed(row: SandboxRow) -> dict[str, Any]:
    return _listed_model(row).model_dump(mode="json", by_alias=True, exclude_none=True)


def _listed_model(row: SandboxRow) -> wire.ListedSandbox:
    return wire.ListedSandbox(
        template_id=row.image,
        sandbox_id=row.id,
        client_id=CLIENT_ID,
        alias=row.image,
        started_at=row.created_at,
        end_at=_end(row),
        cpu_count=row.cpu,
        memory_mb=row.mem,
        disk_size_mb=row.disk_mb,
        state=service.state_of(row) or "paused",
        envd_version=ENVD_VERSION,
        metadata=dict(row.labels or {}),
    )


def _end(row: SandboxRow) -> Any:
    """A sandbox of the VoidRun API has no end time: its creation plus E2B's maximum."""
    if row.end_at is not None:
        return row.end_at
    return row.created_at + timedelta(seconds=service.MAX_TIMEOUT)


def _network(spec: wire.NewSandbox) -> NetworkSpec | None:
    net = spec.network
    allow_out = net.allow_out if net is not None else None
    deny_out = net.deny_out if net is not None else None
    if spec.allow_internet_access is None and allow_out is None and deny_out is None:
        return None
    return NetworkSpec(
        allow_internet_access=spec.allow_internet_access,
        allow_out=allow_out,
        deny_out=deny_out,
    )


class ControlApp(FastAPI):
    """Starlette's stack re-raises what its catch-all handler answered (and the main app's
    edge would then see a started response): this one answers every error itself."""

    def build_middleware_stack(self) -> ASGIApp:
        handlers = {k: v for k, v in self.exception_handlers.items() if k not in (500, Exception)}
        inner = ExceptionMiddleware(self.router, handlers=handlers)

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            started = False

            async def tracking(message: Message) -> None:
                nonlocal started
                started = started or message["type"] == "http.response.start"
                await send(message)

            try:
                await inner(scope, receive, tracking)
            except Exception as exc:
                if started:
                    raise
                await rest_of(exc)(scope, receive, send)

        return app


def build(ctx: AppContext, tokens_of: Tokens) -> FastAPI:
    app = ControlApp(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.ctx = ctx
    app.state.tokens = tokens_of

    async def on_error(_request: Request, exc: Exception) -> JSONResponse:
        return rest_of(exc)

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error, details = _describe_validation(exc)
        return rest_error(400, f"{error}: {details}" if details else error)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:  # no such route: a part of E2B's API not served here
            path = request.url.path
            return rest_error(501, f"{request.method} {path} is not implemented by this server")
        return rest_error(exc.status_code, str(exc.detail))

    app.add_exception_handler(VoidRunError, on_error)
    app.add_exception_handler(AgentError, on_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)

    @app.post("/v2/sandboxes", status_code=201)
    @app.post("/sandboxes", status_code=201, include_in_schema=False)
    async def create(
        body: wire.NewSandbox, who: Caller, e2b: Service, keys: AccessTokens
    ) -> dict[str, Any]:
        new = service.NewSandbox(
            template_id=body.template_id,
            timeout=body.timeout,
            metadata=body.metadata or {},
            env_vars=body.env_vars or {},
            auto_pause=body.auto_pause is True,
            network=_network(body),
        )
        return _created(await e2b.create(who, new), keys)

    @app.post("/v2/sandboxes/{sandbox_id}/connect")
    @app.post("/sandboxes/{sandbox_id}/connect", include_in_schema=False)
    @app.post("/sandboxes/{sandbox_id}/resume", include_in_schema=False)
    async def connect(
        sandbox_id: str,
        body: wire.ConnectSandbox,
        who: Caller,
        e2b: Service,
        keys: AccessTokens,
        response: Response,
    ) -> dict[str, Any]:
        resumed = await e2b.connect(who, sandbox_id, body.timeout)
        response.status_code = 201 if resumed else 200
        return _created(await e2b.info(who, sandbox_id), keys)

    @app.get("/v2/sandboxes")
    @app.get("/sandboxes", include_in_schema=False)
    async def list_sandboxes(
        who: Caller,
        e2b: Service,
        response: Response,
        metadata: str = "",
        state: str = "",
        limit: Annotated[int, Query(ge=1, le=service.MAX_LIST)] = service.MAX_LIST,
        next_token: Annotated[str, Query(alias="nextToken", max_length=16)] = "",
    ) -> list[dict[str, Any]]:
        labels = {
            urllib.parse.unquote(k): urllib.parse.unquote(v)
            for k, v in urllib.parse.parse_qsl(metadata, keep_blank_values=True)
        }
        states = {s for s in state.split(",") if s}
        if not states <= {"running", "paused"}:
            raise InvalidInputError("Invalid state", "running, paused")
        page = await e2b.list(who, labels, states, limit, next_token)
        if page.next_token:
            response.headers["x-next-token"] = page.next_token
        return [_listed(row) for row in page.rows]

    @app.get("/sandboxes/{sandbox_id}")
    async def get_sandbox(
        sandbox_id: str, who: Caller, e2b: Service, keys: AccessTokens
    ) -> dict[str, Any]:
        row = await e2b.info(who, sandbox_id)
        listed = _listed_model(row)
        network = row.network or {}
        detail = wire.SandboxDetail(
            **listed.model_dump(),
            envd_access_token=keys.token_for(row.id, ENVD_PURPOSE),
            allow_internet_access=network.get("allowInternetAccess"),
            lifecycle=wire.Lifecycle(auto_resume=True, on_timeout=row.on_timeout or "kill"),
        )
        return detail.model_dump(mode="json", by_alias=True, exclude_none=True)

    @app.delete("/sandboxes/{sandbox_id}", status_code=204)
    async def kill(sandbox_id: str, who: Caller, e2b: Service) -> Response:
        await e2b.kill(who, sandbox_id)
        return Response(status_code=204)

    @app.post("/sandboxes/{sandbox_id}/timeout", status_code=204)
    async def set_timeout(
        sandbox_id: str, body: wire.TimeoutRequest, who: Caller, e2b: Service
    ) -> Response:
        await e2b.set_timeout(who, sandbox_id, body.timeout)
        return Response(status_code=204)

    @app.post("/sandboxes/{sandbox_id}/pause", status_code=204)
    async def pause(sandbox_id: str, who: Caller, e2b: Service) -> Response:
        await e2b.pause(who, sandbox_id)
        return Response(status_code=204)

    return app
