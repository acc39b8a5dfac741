"""The E2B control plane's wire models (``api/e2b/control.py``), with E2B's own field names
(camelCase, ``templateID``/``sandboxID``, ``allow_internet_access`` as E2B spells it).
Unknown request fields are ignored, as E2B's API does (newer SDKs send more)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class _In(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class NetworkConfig(_In):
    allow_out: list[str] | None = Field(None, alias="allowOut")
    deny_out: list[str] | None = Field(None, alias="denyOut")
    allow_public_traffic: bool | None = Field(None, alias="allowPublicTraffic")


class NewSandbox(_In):
    template_id: str = Field(alias="templateID", min_length=1, max_length=151)
    timeout: StrictInt | None = None
    auto_pause: StrictBool | None = Field(None, alias="autoPause")
    allow_internet_access: StrictBool | None = None
    network: NetworkConfig | None = None
    metadata: dict[str, str] | None = None
    env_vars: dict[str, str] | None = Field(None, alias="envVars")


class ConnectSandbox(_In):
    timeout: StrictInt | None = None


class TimeoutRequest(_In):
    timeout: StrictInt


class SandboxOut(_Out):
    """What create and connect answer."""

    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    envd_version: str = Field(serialization_alias="envdVersion")
    alias: str | None = None
    envd_access_token: str = Field(serialization_alias="envdAccessToken")
    traffic_access_token: str | None = Field(None, serialization_alias="trafficAccessToken")
    domain: str | None = None


class Lifecycle(_Out):
    auto_resume: bool = Field(serialization_alias="autoResume")
    on_timeout: str = Field(serialization_alias="onTimeout")


class ListedSandbox(_Out):
    template_id: str = Field(serialization_alias="templateID")
    sandbox_id: str = Field(serialization_alias="sandboxID")
    client_id: str = Field(serialization_alias="clientID")
    alias: str | None = None
    started_at: datetime = Field(serialization_alias="startedAt")
    end_at: datetime = Field(serialization_alias="endAt")
    cpu_count: int = Field(serialization_alias="cpuCount")
    memory_mb: int = Field(serialization_alias="memoryMB")
    disk_size_mb: int = Field(serialization_alias="diskSizeMB")
    state: str
    envd_version: str = Field(serialization_alias="envdVersion")
    metadata: dict[str, str] = Field(default_factory=dict)


class SandboxDetail(ListedSandbox):
    envd_access_token: str = Field(serialization_alias="envdAccessToken")
    allow_internet_access: bool | None = Field(None, serialization_alias="allowInternetAccess")
    domain: str | None = None
    network: dict[str, Any] | None = None
    lifecycle: Lifecycle | None = None
