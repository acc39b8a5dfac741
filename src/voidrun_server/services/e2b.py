"""The E2B API's control plane on our sandboxes (``api/e2b``): the same rows, verbs and
lifecycle as the VoidRun API, plus what E2B adds on top of them.

- ``templateID`` names one of our images: E2B's default templates (``base``,
  ``code-interpreter-v1``) are our default image (the interpreter runs in it).
- ``timeout`` is an end time (``end_at``): at it the sandbox is deleted, or paused when it was
  created with ``autoPause`` (``expire_due``, called by the reconcile loop). ``connect`` and
  ``set_timeout`` move it.
- ``metadata`` is our labels, ``envVars`` the sandbox env, ``allow_internet_access`` and
  ``network`` our egress policy.
- A sandbox of another org, or one that no longer runs or sleeps, is "not found".

The in-sandbox half authenticates with the sandbox's access token and acts for the sandbox's
org (``owner``).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..errors import ConflictError, InvalidInputError, NotFoundError
from ..schemas.sandboxes import NetworkSpec, SandboxCreate
from ..store.db import transaction
from ..store.repos import sandboxes as repo
from ..store.tables import Sandbox
from ..store.types import utcnow
from .accounts import Principal
from .lifecycle import Status, Verb
from .sandboxes import SandboxService

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = frozenset({"base", "code-interpreter-v1", "code-interpreter"})
DEFAULT_TIMEOUT = 300
MAX_TIMEOUT = 24 * 3600  # E2B's own ceiling
MAX_LIST = 100
# E2B knows two states; our stopped sandboxes resume on connect as paused ones do.
STATE_OF = {Status.RUNNING: "running", Status.PAUSED: "paused", Status.STOPPED: "paused"}


def image_for(template_id: str, default_image: str) -> str:
    if not template_id or template_id in DEFAULT_TEMPLATES:
        return default_image
    return template_id


def state_of(row: Sandbox) -> str | None:
    """``running``/``paused``, or None for a sandbox E2B would not know (gone)."""
    try:
        return STATE_OF.get(Status(row.status))
    except ValueError:
        return None


def timeout_seconds(value: int | None) -> int:
    if value is None:
        return DEFAULT_TIMEOUT
    if not 0 < value <= MAX_TIMEOUT:
        raise InvalidInputError("Invalid timeout", f"1..{MAX_TIMEOUT} seconds")
    return value


@dataclass(frozen=True)
class NewSandbox:
    template_id: str
    timeout: int | None
    metadata: dict[str, str]
    env_vars: dict[str, str]
    auto_pause: bool
    network: NetworkSpec | None


@dataclass(frozen=True)
class Page:
    rows: Sequence[Sandbox]
    next_token: str | None


class E2BSandboxes:
    def __init__(self, sandboxes: SandboxService) -> None:
        self.sandboxes = sandboxes

    async def create(self, caller: Principal, new: NewSandbox) -> Sandbox:
        seconds = timeout_seconds(new.timeout)
        body = SandboxCreate(
            name=f"e2b-{secrets.token_hex(6)}",
            image=image_for(new.template_id, self.sandboxes.settings.default_image),
            env_vars=new.env_vars or None,
            labels=new.metadata or None,
            network=new.network,
            sync=True,
        )
        row = await self.sandboxes.create(caller, body)
        on_timeout = "pause" if new.auto_pause else "kill"
        end = utcnow() + timedelta(seconds=seconds)
        await self._set_end(row.id, end, on_timeout)
        row.end_at, row.on_timeout = end, on_timeout
        return row

    async def info(self, caller: Principal, sandbox_id: str) -> Sandbox:
        row = await self.sandboxes.get(caller, sandbox_id)
        if state_of(row) is None:
            raise NotFoundError("Sandbox not found")
        return row

    async def list(
        self, caller: Principal, metadata: dict[str, str], states: set[str], limit: int, token: str
    ) -> Page:
        """Newest first; ``token`` is the page number the previous answer handed out."""
        if not 0 < limit <= MAX_LIST:
            raise InvalidInputError("Invalid limit", f"1..{MAX_LIST}")
        page = int(token) if token.isdigit() and len(token) < 9 else 1
        if token and str(page) != token:
            raise InvalidInputError("Invalid nextToken")
        rows, total = await self.sandboxes.list(caller, page, limit, metadata)
        wanted = states or {"running", "paused"}
        kept = [row for row in rows if state_of(row) in wanted]
        more = page * limit < total
        return Page(kept, str(page + 1) if more else None)

    async def kill(self, caller: Principal, sandbox_id: str) -> None:
        await self.info(caller, sandbox_id)
        await self.sandboxes.delete(caller, sandbox_id)

    async def set_timeout(self, caller: Principal, sandbox_id: str, lifetime: int) -> None:
        seconds = timeout_seconds(lifetime)
        await self.info(caller, sandbox_id)
        await self._set_end(sandbox_id, utcnow() + timedelta(seconds=seconds))

    async def pause(self, caller: Principal, sandbox_id: str) -> None:
        """409 (ConflictError) when it is already paused, as E2B answers."""
        row = await self.info(caller, sandbox_id)
        if row.status != Status.RUNNING:
            raise ConflictError("Sandbox is already paused")
        await self.sandboxes.apply_verb(caller, sandbox_id, Verb.PAUSE)

    async def connect(self, caller: Principal, sandbox_id: str, lifetime: int | None) -> bool:
        """Running afterwards (resumed if it slept); its end time moved out to at least
        ``lifetime`` seconds from now. A sandbox without an end time (made by the VoidRun
        API) keeps none: connecting must not schedule its deletion (``set_timeout`` does).
        True when it had to be resumed."""
        seconds = timeout_seconds(lifetime)
        row = await self.info(caller, sandbox_id)
        resumed = row.status != Status.RUNNING
        await self.sandboxes.ensure_running(caller, sandbox_id)
        end = utcnow() + timedelta(seconds=seconds)
        if row.end_at is not None and row.end_at < end:
            await self._set_end(sandbox_id, end)
        return resumed

    async def owner(self, sandbox_id: str) -> Principal | None:
        """Who in-sandbox calls act as: the sandbox's org (None: unknown or deleted)."""
        row = self.sandboxes.live_row(sandbox_id)
        if row is None:
            async with self.sandboxes.sessions() as session:
                row = await repo.get(session, sandbox_id)
        if row is None or state_of(row) is None:
            return None
        return Principal(key_id="", org_id=row.org_id, user_id=row.created_by)

    async def _set_end(self, sandbox_id: str, end: datetime, on_timeout: str | None = None) -> None:
        async with transaction(self.sandboxes.sessions) as session:
            await repo.set_end(session, sandbox_id, end, on_timeout)


async def expire_due(service: SandboxService, rows: Sequence[Sandbox], now: datetime) -> None:
    """Sandboxes whose E2B end time passed: deleted, or paused (``autoPause``)."""
    for row in rows:
        if row.end_at is None or row.end_at > now:
            continue
        try:
            if row.on_timeout == "pause":
                if row.status == Status.RUNNING:
                    await service.idle_step(row.id, Verb.PAUSE)
            else:
                await service.idle_step(row.id, Verb.DELETE)
        except Exception as exc:  # one stuck sandbox must not block the others
            log.warning("ending sandbox %s at its timeout failed: %s", row.id, exc)
