"""Typed table mappings. The Alembic migrations in ``migrations/`` must match these exactly
(``tests/unit/test_migrations.py`` compares them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import UtcDateTime, utcnow


class Base(DeclarativeBase):
    pass


class Org(Base):
    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    owner_id: Mapped[str | None] = mapped_column(String(24))
    plan: Mapped[str] = mapped_column(String(32), default="free")
    created_by: Mapped[str | None] = mapped_column(String(24))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    # Per-org quota overrides; NULL means the server default (VOIDRUN_ORG_MAX_*).
    quota_max_sandboxes: Mapped[int | None] = mapped_column(Integer)
    quota_cpu: Mapped[int | None] = mapped_column(Integer)
    quota_mem_mb: Mapped[int | None] = mapped_column(Integer)
    quota_disk_mb: Mapped[int | None] = mapped_column(Integer)


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(254), unique=True)
    image_url: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class OrgMember(Base):
    __tablename__ = "org_members"

    org_id: Mapped[str] = mapped_column(
        String(24), ForeignKey("orgs.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        String(24), ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), default="member")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        String(24), ForeignKey("orgs.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    masked_key: Mapped[str] = mapped_column(String(32))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=lambda: ["*"])
    created_by: Mapped[str] = mapped_column(String(24), ForeignKey("users.id"))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class RevokedApiKey(Base):
    """Digest of every revoked key: a key configured in the environment (the bootstrap key) is
    re-created on start only when it was never seen, so a revoked one stays revoked."""

    __tablename__ = "revoked_api_keys"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(24))
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class KeyEpoch(Base):
    """One row (``id = 1``) whose ``epoch`` grows with every revocation or deactivation of a
    key, in the same transaction: servers cache authenticated keys and drop the cache when the
    epoch they see moves (``services/keycache.py``)."""

    __tablename__ = "key_epoch"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)


class UiSession(Base):
    """A dashboard sign-in (``POST /api/auth/session``): the cookie holds the plain id, this
    row its SHA-256 digest, the API key it was made with, its CSRF token and its expiry."""

    __tablename__ = "ui_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(
        String(24), ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (UniqueConstraint("org_id", "name", "tag", name="uq_images_org_name_tag"),)

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    tag: Mapped[str] = mapped_column(String(50))
    description: Mapped[str] = mapped_column(String(500), default="")
    size_gb: Mapped[int] = mapped_column(Integer, default=0)
    system: Mapped[bool] = mapped_column(Boolean, default=False)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    org_id: Mapped[str | None] = mapped_column(String(24), ForeignKey("orgs.id"))
    created_by: Mapped[str | None] = mapped_column(String(24))
    rootfs: Mapped[str] = mapped_column(String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # imported images (services/image_builds.py): building -> ready | error
    status: Mapped[str] = mapped_column(String(16), default="ready")
    error: Mapped[str | None] = mapped_column(String(2000))
    progress: Mapped[int] = mapped_column(Integer, default=100)  # percent
    source: Mapped[str] = mapped_column(String(1024), default="")
    config: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # Env, WorkingDir, User, ...
    # snapshot images (services/snapshots.py): the image below, and every rootfs below, nearest
    # first; NULL for other images
    parent_id: Mapped[str | None] = mapped_column(String(24), index=True)
    layers: Mapped[list[str] | None] = mapped_column(JSON)
    # on a fleet: the node the import runs on (services/image_builds.py); NULL elsewhere
    node_id: Mapped[str | None] = mapped_column(String(40))


class Sandbox(Base):
    __tablename__ = "sandboxes"
    __table_args__ = (
        Index("ix_sandboxes_org_status", "org_id", "status"),
        Index("ix_sandboxes_node_id", "node_id"),
    )

    id: Mapped[str] = mapped_column(String(24), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(24), ForeignKey("orgs.id"))
    created_by: Mapped[str] = mapped_column(String(24))
    name: Mapped[str] = mapped_column(String(253))
    image: Mapped[str] = mapped_column(String(151))
    image_id: Mapped[str | None] = mapped_column(String(24))
    cpu: Mapped[int] = mapped_column(Integer)
    mem: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    env_vars: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    ports: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    network: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # egress policy, wire form
    workdir: Mapped[str | None] = mapped_column(String(1024))  # image WorkingDir: default cwd
    auto_sleep: Mapped[bool] = mapped_column(Boolean, default=True)
    region: Mapped[str] = mapped_column(String(64), default="")
    ref_id: Mapped[str] = mapped_column(String(256), default="")
    node_id: Mapped[str | None] = mapped_column(String(64))
    isolation: Mapped[str] = mapped_column(String(32), default="namespace")  # its driver
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)
    last_activity_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    paused_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    # the E2B API's timeout (api/e2b): killed, or paused when on_timeout is "pause", at end_at
    end_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    on_timeout: Mapped[str] = mapped_column(String(8), default="kill")


class Node(Base):
    """A node daemon (``voidrun-server node``): where API replicas place sandboxes."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    url: Mapped[str] = mapped_column(String(512))  # internal API, as replicas call it
    tunnel: Mapped[str] = mapped_column(String(300))  # host:port of its tunnel listener
    cpu: Mapped[int] = mapped_column(Integer)
    mem_mb: Mapped[int] = mapped_column(Integer)
    disk_mb: Mapped[int] = mapped_column(BigInteger)
    max_sandboxes: Mapped[int] = mapped_column(Integer)
    committed_cpu: Mapped[int] = mapped_column(Integer, default=0)
    committed_mem_mb: Mapped[int] = mapped_column(Integer, default=0)
    sandbox_count: Mapped[int] = mapped_column(Integer, default=0)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="ready")
    last_heartbeat: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    epoch: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    # ids of the images this node holds, refreshed at each heartbeat (placement); NULL: not
    # reported (a node of an older version, during a rolling upgrade): assumed to hold all
    images: Mapped[list[str] | None] = mapped_column(JSON)


class WatchTicketRow(Base):
    """A file-watch ticket (``POST …/files/watch``) waiting for its WebSocket, shared by API
    replicas: any replica takes it (once) with ``DELETE … RETURNING``."""

    __tablename__ = "watch_tickets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # the UUID4 handed out
    org_id: Mapped[str] = mapped_column(String(24), index=True)
    sandbox_id: Mapped[str] = mapped_column(String(24))
    path: Mapped[str] = mapped_column(Text)
    recursive: Mapped[bool] = mapped_column(Boolean)
    ignore_hidden: Mapped[bool] = mapped_column(Boolean)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)


class Event(Base):
    """Append-only audit trail: who did what to which sandbox or key, and when."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    org_id: Mapped[str | None] = mapped_column(String(24), index=True)
    sandbox_id: Mapped[str | None] = mapped_column(String(24), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
