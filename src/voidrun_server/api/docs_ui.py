"""``/api/docs``: Swagger UI served from this server, so the page works offline.

FastAPI's own docs page loads Swagger UI's JS, CSS and favicon from public hosts (a blank page
without Internet access). The assets here come from the pinned ``fastapi-offline`` package (its
``static/`` directory only) and are served under ``/api/docs/static/``. The page tells Swagger UI
not to call its public spec validator either. ReDoc is not served.

Neither route is an ``APIRoute``: they stay out of ``openapi.json`` and need no API key.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

DOCS_PATH = "/api/docs"
STATIC_PATH = f"{DOCS_PATH}/static"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"  # where FastAPI's own page had it
ASSETS = Path(fastapi_offline.__file__).parent / "static"


def routes(title: str, openapi_url: str) -> list[BaseRoute]:
    """The docs page, its static assets and Swagger UI's OAuth2 redirect page."""

    async def page(request: Request) -> Response:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{STATIC_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC_PATH}/favicon.png",
            oauth2_redirect_url=OAUTH2_REDIRECT_PATH,
            swagger_ui_parameters={"validatorUrl": None},
        )

    async def oauth2_redirect(_request: Request) -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    return [
        Route(DOCS_PATH, page, methods=["GET"], include_in_schema=False),
        Route(OAUTH2_REDIRECT_PATH, oauth2_redirect, methods=["GET"], include_in_schema=False),
        Mount(STATIC_PATH, app=StaticFiles(directory=ASSETS), name="docs-static"),
    ]
