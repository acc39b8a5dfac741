"""The application's route table, flattened (FastAPI keeps included routers nested)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi.routing import APIRoute, APIWebSocketRoute


def flatten(routes: Iterable[Any]) -> Iterator[Any]:
    for route in routes:
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from flatten(nested.routes)
        else:
            yield route


def http_routes(routes: Iterable[Any]) -> list[tuple[str, str]]:
    """(method, path) of every HTTP API route."""
    return [
        (method, route.path)
        for route in flatten(routes)
        if isinstance(route, APIRoute)
        for method in sorted(route.methods or ())
    ]


def websocket_routes(routes: Iterable[Any]) -> list[str]:
    return [route.path for route in flatten(routes) if isinstance(route, APIWebSocketRoute)]
