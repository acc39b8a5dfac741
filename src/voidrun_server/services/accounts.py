"""Orgs, users and API keys: creation, authentication, activation, revocation."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from .. import ids
from ..errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError
from ..store.repos import accounts as repo
from ..store.tables import ApiKey, Org, OrgMember, User
from ..store.types import utcnow

log = logging.getLogger(__name__)

DEFAULT_ORG = "default"
DEFAULT_USER_EMAIL = "admin@localhost"
KEY_NAME_MAX = 25


@dataclass(frozen=True)
class Principal:
    """Who is calling: everything a request may touch is scoped to ``org_id``."""

    key_id: str
    org_id: str
    user_id: str


@dataclass(frozen=True)
class NewKey:
    key: ApiKey
    plain: str


async def create_org(session: AsyncSession, name: str, owner: User | None = None) -> Org:
    name = name.strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInputError("invalid org name", "must be 1..100 characters")
    if await repo.org_by_name(session, name) is not None:
        raise ConflictError("org already exists", name)
    org = Org(id=ids.new_id(), name=name, owner_id=owner.id if owner else None)
    org.created_by = org.owner_id
    session.add(org)
    if owner is not None:
        session.add(OrgMember(org_id=org.id, user_id=owner.id, role="owner"))
    await session.flush()
    return org


async def create_user(session: AsyncSession, org: Org, email: str, name: str = "") -> User:
    email = email.strip().lower()
    if not 3 <= len(email) <= 254 or "@" not in email:
        raise InvalidInputError("invalid email", email)
    user = await repo.user_by_email(session, email)
    if user is None:
        user = User(id=ids.new_id(), email=email, name=name.strip() or email.split("@")[0])
        session.add(user)
        await session.flush()
    if await repo.is_member(session, org.id, user.id):
        raise ConflictError("user is already a member of this org", f"{email} in {org.name}")
    session.add(OrgMember(org_id=org.id, user_id=user.id, role="member"))
    if org.owner_id is None:
        org.owner_id = user.id
    await session.flush()
    return user


async def create_key(
    session: AsyncSession, org_id: str, user_id: str, name: str, plain: str | None = None
) -> NewKey:
    name = name.strip()
    if not name:
        raise InvalidInputError("keyName is required")
    if len(name) > KEY_NAME_MAX:
        raise InvalidInputError("keyName too long", f"at most {KEY_NAME_MAX} characters")
    plain = plain or ids.new_api_key()
    key = ApiKey(
        id=ids.new_id(),
        org_id=org_id,
        name=name,
        key_hash=ids.hash_api_key(plain),
        masked_key=ids.mask_api_key(plain),
        scopes=["*"],
        created_by=user_id,
        is_active=True,
    )
    session.add(key)
    try:
        await session.flush()
    except IntegrityError as exc:  # only a duplicate hash can collide
        raise ConflictError("API key already exists") from exc
    return NewKey(key=key, plain=plain)


async def authenticate(session: AsyncSession, plain: str, touch_interval: timedelta) -> Principal:
    """One indexed lookup: a revoked key fails on its very next use."""
    principal, _ = await authenticate_digest(session, ids.hash_api_key(plain), touch_interval)
    return principal


async def authenticate_digest(
    session: AsyncSession, digest: str, touch_interval: timedelta
) -> tuple[Principal, datetime | None]:
    """The caller of a key digest and the key's ``lastUsedAt`` after this use (refreshed when
    older than ``touch_interval``). ``services/keycache.py`` caches the result."""
    key = await repo.key_by_hash(session, digest)
    if key is None or not key.is_active:
        raise AuthenticationError()
    now = utcnow()
    used = key.last_used_at
    if used is None or now - used >= touch_interval:
        await repo.set_key_last_used(session, key.id, now)
        used = now
    return Principal(key_id=key.id, org_id=key.org_id, user_id=key.created_by), used


async def me(session: AsyncSession, user_id: str) -> tuple[User, Sequence[Org]]:
    """The calling user and the orgs they belong to."""
    user = await repo.user_by_id(session, user_id)
    if user is None:
        raise NotFoundError("user not found")
    return user, await repo.orgs_of_user(session, user.id)


async def members(session: AsyncSession, org_id: str) -> Sequence[User]:
    return await repo.org_members(session, org_id)


async def list_keys(session: AsyncSession, org_id: str) -> Sequence[ApiKey]:
    return await repo.keys_of_org(session, org_id)


async def _key(session: AsyncSession, org_id: str, key_id: str) -> ApiKey:
    key = await repo.key_in_org(session, org_id, key_id) if ids.is_id(key_id) else None
    if key is None:
        raise NotFoundError("API key not found")
    return key


async def set_key_active(session: AsyncSession, org_id: str, key_id: str, active: bool) -> ApiKey:
    key = await _key(session, org_id, key_id)
    key.is_active = active
    if not active:
        await repo.bump_key_epoch(session)  # key caches must forget it (services/keycache.py)
    await session.flush()
    return key


async def touch_key(session: AsyncSession, org_id: str, key_id: str) -> ApiKey:
    key = await _key(session, org_id, key_id)
    key.last_used_at = utcnow()
    await session.flush()
    return key


async def revoke_key(session: AsyncSession, org_id: str, key_id: str) -> None:
    """Delete the key and remember its digest, so ``bootstrap`` never re-creates it."""
    key = await _key(session, org_id, key_id)
    repo.record_revoked(session, key)
    await session.delete(key)
    await repo.bump_key_epoch(session)  # key caches must forget it (services/keycache.py)
    await session.flush()


async def inactive_keys(session: AsyncSession, key_ids: Sequence[str]) -> set[str]:
    """Of ``key_ids``, those that were revoked or deactivated (open streams must end)."""
    return await repo.inactive_key_ids(session, key_ids) if key_ids else set()


async def org_named(session: AsyncSession, name: str) -> Org:
    org = await repo.org_by_name(session, name)
    if org is None:
        raise NotFoundError("org not found", name)
    return org


async def ensure_default_admin(session: AsyncSession) -> tuple[Org, User]:
    """The org ``default`` with the user ``admin`` as owner, created when missing."""
    org = await repo.org_by_name(session, DEFAULT_ORG)
    user = await repo.user_by_email(session, DEFAULT_USER_EMAIL)
    if user is None:
        user = User(id=ids.new_id(), email=DEFAULT_USER_EMAIL, name="admin")
        session.add(user)
        await session.flush()
    if org is None:
        org = await create_org(session, DEFAULT_ORG, owner=user)
    elif not await repo.is_member(session, org.id, user.id):
        session.add(OrgMember(org_id=org.id, user_id=user.id, role="owner"))
        await session.flush()
    return org, user


async def bootstrap(
    session: AsyncSession, configured_key: str | None, key_file: Path
) -> str | None:
    """Make sure someone can log in. Returns a newly generated plain key, if one was made.

    A configured key is added to the default org whenever it is not known yet, so scripts can
    start a server with a key of their choosing on an existing data dir. A configured key that
    was revoked is never re-created: the environment still holds it, but revoking it is the
    operator's (or a tenant admin's) decision and a restart must not undo it. Without a
    configured key, one is generated only when the database has no org at all (first start) and
    saved to ``key_file``.
    """
    if configured_key:
        problem = ids.configured_key_problem(configured_key)
        if problem:
            raise InvalidInputError(
                "VOIDRUN_BOOTSTRAP_API_KEY is too weak", f"{problem}; {ids.GENERATE_KEY_HINT}"
            )
        digest = ids.hash_api_key(configured_key)
        if await repo.was_revoked(session, digest):
            log.warning(
                "VOIDRUN_BOOTSTRAP_API_KEY was revoked and is not re-created; configure a new "
                "key (%s) or create one with `voidrun-server keys create`",
                ids.GENERATE_KEY_HINT,
            )
            return None
        if await repo.key_by_hash(session, digest) is None:
            org, user = await ensure_default_admin(session)
            await create_key(session, org.id, user.id, "bootstrap", plain=configured_key)
            log.info("bootstrap API key from VOIDRUN_BOOTSTRAP_API_KEY added to org 'default'")
        return None
    if await repo.count_orgs(session) > 0:
        return None
    org, user = await ensure_default_admin(session)
    new = await create_key(session, org.id, user.id, "bootstrap")
    write_secret_file(key_file, new.plain + "\n")
    return new.plain


def write_secret_file(path: Path, content: str) -> None:
    """Write ``content`` readable by the owner only, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content)
    os.replace(tmp, path)


async def key_owner(session: AsyncSession, org: Org, email: str | None) -> str:
    """The user a CLI-created key belongs to: the given member, else the org's owner."""
    if email is None:
        if org.owner_id is None:
            raise InvalidInputError("org has no members", "create a user first or pass --email")
        return org.owner_id
    user = await repo.user_by_email(session, email.strip().lower())
    if user is None or not await repo.is_member(session, org.id, user.id):
        raise NotFoundError("user not found in org", f"{email} in {org.name}")
    return user.id
