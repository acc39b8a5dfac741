"""The application's route table, flattened (FastAPI keeps included routers nested).

A router included into another router keeps its own routes' paths; the prefix of the router it
was included into lives in the include context. The prefixes are added up here, so every path
is the one a client requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.routing import APIRoute, APIWebSocketRoute


def flatten(routes: Iterable[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(full path, route) of every leaf route."""
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            context = getattr(route, "include_context", None)
            yield from flatten(nested.routes, prefix + str(getattr(context, "prefix", "")))
        else:
            yield prefix + str(getattr(route, "path", "")), route


def http_routes(routes: Iterable[Any]) -> list[tuple[str, str]]:
    """(method, path) of every HTTP API route. HEAD (the preview proxy has it) is left out: its
    answers have no body to check, and it runs the GET route's code path."""
    return [
        (method, path)
        for path, route in flatten(routes)
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
        if method != "HEAD"
    ]


def websocket_routes(routes: Iterable[Any]) -> list[str]:
    return [path for path, route in flatten(routes) if isinstance(route, APIWebSocketRoute)]
