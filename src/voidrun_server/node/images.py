"""A node's image routes on the internal API (``services/node_images.py`` decides): the files
of an image it holds, a copy from another node, an import a replica placed here, its log, and
the removal of a deleted image's files. Errors are ``{"error", "details"}`` with the status of
the one table (``api/errors.py``), which the replica raises again as the same class.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..api.errors import error_response, status_for
from ..drivers.remote import wire
from ..errors import InvalidInputError, ServiceUnavailableError, VoidRunError
from ..services.image_builds import ImageBuilds
from ..services.node_images import NodeImages

Handler = Callable[[Request], Awaitable[Response]]
Guard = Callable[[Handler], Handler]
LONGEST_WAIT = 30.0


class NodeImageRoutes:
    def __init__(self, images: NodeImages) -> None:
        self.images = images
        self.builds: ImageBuilds | None = None  # set once the node's task group runs

    @property
    def _builds(self) -> ImageBuilds:
        if self.builds is None:
            raise ServiceUnavailableError("the node is starting")
        return self.builds

    def routes(self, guard: Guard) -> list[Route]:
        p = wire.PREFIX

        def route(path: str, handler: Handler, method: str) -> Route:
            return Route(f"{p}/images{path}", guard(_user_errors(handler)), methods=[method])

        return [
            route("/{image}/files", self.files, "GET"),
            route("/{image}/copy", self.copy, "POST"),
            route("/{image}/build", self.build, "POST"),
            route("/{image}/log", self.log, "GET"),
            route("/remove", self.remove, "POST"),
        ]

    async def files(self, request: Request) -> Response:
        chunks = await self.images.files(request.path_params["image"])
        return StreamingResponse(chunks, media_type="application/x-tar")

    async def copy(self, request: Request) -> Response:
        body = await _body(request)
        copied = await self.images.copy(request.path_params["image"], str(body.get("from") or ""))
        return JSONResponse({"copied": copied is not None, "bytes": copied or 0})

    async def build(self, request: Request) -> Response:
        await self._builds.start_placed(request.path_params["image"], await _body(request))
        return JSONResponse({}, 202)

    async def log(self, request: Request) -> Response:
        """Lines after ``position``, waiting up to ``wait`` seconds for one while it builds."""
        try:
            position = int(request.query_params.get("position", "0"))
            wait = min(LONGEST_WAIT, float(request.query_params.get("wait", "0")))
        except ValueError:
            raise InvalidInputError("position and wait are numbers") from None
        lines, position, status, error = await self._builds.log_since(
            request.path_params["image"], position, wait
        )
        body = {"lines": lines, "position": position, "status": status, "error": error}
        return JSONResponse(body)

    async def remove(self, request: Request) -> Response:
        await self.images.remove(str((await _body(request)).get("rootfs") or ""))
        return JSONResponse({})


async def _body(request: Request) -> dict[str, Any]:
    """The JSON object the replica sent (a bad one: the guard's 400)."""
    return wire.object_from_json(await request.body())


def _user_errors(handler: Handler) -> Handler:
    async def mapped(request: Request) -> Response:
        try:
            return await handler(request)
        except VoidRunError as exc:
            return error_response(status_for(exc), exc.message, exc.details)

    return mapped
