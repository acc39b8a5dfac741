"""Dashboard sign-in (``/api/auth/session``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .common import WireModel


class SessionCreate(WireModel):
    api_key: str = Field(min_length=1, max_length=200, description="An API key of the org.")


class SessionInfo(WireModel):
    csrf_token: str = Field(description="Send it back as X-CSRF-Token on POST/PUT/PATCH/DELETE.")
    expires_at: datetime
    org_id: str
    user_id: str
    key_id: str
