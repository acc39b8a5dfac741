"""The image config's ``User``: who a sandbox's commands run as when a request names nobody.

Exec, exec-stream, background commands, shell sessions and terminals send the agent a ``user``:
the request's own (an extension field), else the image's ``User``, else none (root). The agent
resolves it through the image's ``/etc/passwd`` and ``/etc/group`` (``agent/users.py``).

An image's config never changes once it is ready, so the answer is kept per image id: the data
plane asks no database after the first call.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from ..errors import InvalidInputError
from ..store.repos import images as repo
from ..store.tables import Sandbox

MAX_KNOWN = 4096  # image ids remembered; the map starts over past it
MAX_USER_CHARS = 64
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-:")


def requested_user(value: str | None) -> str | None:
    """A request's ``user`` (``name``, ``uid``, ``name:group``, ``uid:gid``), checked."""
    if value is None or value == "":
        return None
    if len(value) > MAX_USER_CHARS or not _ALLOWED.issuperset(value) or value.count(":") > 1:
        raise InvalidInputError(
            "Invalid user",
            f"USER or USER:GROUP, names or numeric ids, at most {MAX_USER_CHARS} characters",
        )
    return value


class ImageUsers:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._known: dict[str, str] = {}

    async def default(self, row: Sandbox) -> str | None:
        """The ``User`` of the sandbox's image, None for none (or root's image)."""
        image_id = row.image_id
        if not image_id:
            return None
        user = self._known.get(image_id)
        if user is None:
            async with self._sessions() as session:
                image = await repo.by_id(session, row.org_id, image_id)
            config = (image.config if image is not None else None) or {}
            user = str(config.get("user") or "")
            if len(self._known) >= MAX_KNOWN:
                self._known.clear()
            self._known[image_id] = user
        return user or None

    async def effective(self, row: Sandbox, requested: str | None) -> str | None:
        return requested if requested is not None else await self.default(row)
