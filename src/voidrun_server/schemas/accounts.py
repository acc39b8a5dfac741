"""Orgs, users and API keys on the wire (CONTRACT §A.2, §A.3, §2.3)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field, StrictBool

from .common import WireModel


class ApiKeyPublic(WireModel):
    id: str
    org_id: str
    name: str
    scopes: list[str]
    created_by: str
    created_at: datetime
    last_used_at: datetime | None
    is_active: bool
    updated_at: datetime
    masked_key: str


class GeneratedApiKey(WireModel):
    plain_key: str
    key_id: str
    key_name: str
    org_id: str
    created_at: datetime
    expires_in: str = "Never (until revoked)"


class ApiKeyCreate(WireModel):
    key_name: str = Field(description="1..25 characters; trimmed.")
    org_id: str | None = Field(None, description="Ignored: the org always comes from the key.")


class ApiKeyActivate(WireModel):
    is_active: StrictBool


class OrgRef(WireModel):
    id: str
    name: str


class UserPublic(WireModel):
    id: str
    name: str
    email: str
    image_url: str
    created_at: datetime


class Me(UserPublic):
    orgs: list[OrgRef]


class Version(WireModel):
    version: str
    commit: str
    build_time: str


class IsolationHealth(WireModel):
    available: bool
    default: bool = False
    reason: str | None = Field(None, description="Why it cannot run here.")
    hint: str | None = Field(None, description="What to install or change.")
    runtime: str | None = Field(None, description="What runs its sandboxes, with its version.")
    platform: str | None = Field(None, description="gvisor: ptrace, systrap or kvm.")
    accelerator: str | None = Field(None, description="microvm: kvm or tcg.")
    notes: str | None = Field(None, description="Why this platform or accelerator.")


class Health(WireModel):
    status: str
    database: str
    sandboxes: str | None = Field(
        None, description="ok, or why sandboxes are unavailable (they answer 503 then)."
    )
    isolations: dict[str, IsolationHealth] | None = Field(
        None, description="Per isolation (driver): whether it runs here and how."
    )
