"""Sandboxes and images on the wire (CONTRACT §2.1–2.3, §A.4, §A.7)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from .common import WireModel


class PortSpec(BaseModel):
    protocol: Literal["http", "tcp"] = "http"
    port: int
    public: bool | None = Field(
        None,
        description="Extension: true serves the port's previews to anyone, without credentials.",
    )


class NetworkSpec(WireModel):
    """Egress policy (docs/network.md). Absent fields: the server default on create, the
    current value on update."""

    model_config = ConfigDict(
        alias_generator=WireModel.model_config.get("alias_generator"),
        populate_by_name=True,
        extra="forbid",
    )

    allow_internet_access: StrictBool | None = Field(
        None, description="False: nothing leaves the sandbox, DNS lookups included."
    )
    allow_out: list[str] | None = Field(
        None,
        description="Addresses, CIDRs, domains, *.suffix; when non-empty only these are reachable.",
    )
    deny_out: list[str] | None = Field(None, description="Refused even when allowed; wins.")


class NetworkUsagePublic(WireModel):
    rx_bytes: int = Field(description="Received by the sandbox since it last started.")
    tx_bytes: int = Field(description="Sent by the sandbox since it last started.")


class SandboxCreate(WireModel):
    """Types only; the value rules (and their reference error texts) live in the service."""

    name: str = Field(description="DNS-1123 subdomain, at most 253 characters.")
    image: str | None = Field(None, description="`name` or `name:tag`; default `code`.")
    cpu: int | None = Field(None, description="1..8 cores; default 1.")
    mem: int | None = Field(None, description="1024..16384 MiB; default 1024.")
    org_id: str | None = Field(None, description="Must equal the key's org when given.")
    user_id: str | None = Field(None, description="Ignored: the user comes from the key.")
    sync: bool | None = Field(None, description="Default true: answer once the agent is up.")
    env_vars: dict[str, str] | None = None
    auto_sleep: bool | None = Field(None, description="Default true.")
    region: str | None = Field(None, max_length=64)
    ref_id: str | None = Field(None, max_length=256)
    labels: dict[str, str] | None = None
    ports: list[PortSpec] | None = None
    publish_ports: list[int] | None = Field(None, description="Legacy form of `ports`.")
    network: NetworkSpec | None = Field(None, description="Extension: egress policy.")
    isolation: str | None = Field(
        None,
        max_length=32,
        description=(
            "Extension: namespace, gvisor or microvm (docs/isolation.md); default: the "
            "server's VOIDRUN_DRIVER."
        ),
    )
    start_cmd: bool | None = Field(
        None,
        description="Extension: start the image's Entrypoint+Cmd as a background command.",
    )


class SandboxUpdate(WireModel):
    model_config = ConfigDict(
        alias_generator=WireModel.model_config.get("alias_generator"),
        populate_by_name=True,
        extra="forbid",
    )

    auto_sleep: StrictBool | None = None
    network: NetworkSpec | None = Field(None, description="Extension: a new egress policy.")
    ports: list[PortSpec] | None = Field(
        None,
        description="Extension: the declared ports, replaced as a whole; previews follow at once.",
    )

    @model_validator(mode="after")
    def _something(self) -> SandboxUpdate:
        if self.auto_sleep is None and self.network is None and self.ports is None:
            raise ValueError("nothing to update: give autoSleep, network or ports")
        return self


class SandboxPublic(WireModel):
    id: str
    name: str
    image: str
    cpu: int
    mem: int
    disk_mb: int = Field(serialization_alias="diskMB", validation_alias="diskMB")
    status: str
    created_at: datetime
    created_by: str
    org_id: str
    env_vars: dict[str, str] | None = None
    auto_sleep: bool
    region: str | None = None
    ref_id: str | None = None
    labels: dict[str, str] | None = None
    ports: list[PortSpec] | None = None
    publish_ports: list[int] | None = None
    updated_at: datetime
    error: str | None = Field(
        None, description="Extension: why the sandbox is in status error or killed."
    )
    network: NetworkSpec | None = Field(None, description="Extension: its egress policy.")
    network_usage: NetworkUsagePublic | None = Field(
        None, description="Extension (GET of one sandbox): bytes through its link."
    )
    isolation: str = Field(
        "namespace", description="Extension: the driver that runs it (docs/isolation.md)."
    )
    last_activity_at: datetime | None = Field(
        None,
        description=(
            "Extension: the last data-plane call (exec, files, commands, PTY…); auto-sleep "
            "counts idleness from it. Recorded in batches: up to a few seconds behind."
        ),
    )
    node_id: str | None = Field(
        None,
        description=(
            "The node holding it, only with VOIDRUN_EMIT_NODE_ID (CONTRACT C.11: the official "
            "SDK then calls `<nodeId>-<host>` for this sandbox; docs/scale-out.md)."
        ),
    )


class ListMeta(BaseModel):
    page: int
    limit: int
    total: int
    totalPages: int  # noqa: N815 - wire name


class SandboxList(BaseModel):
    status: str = "success"
    message: str
    data: list[SandboxPublic]
    meta: ListMeta


class SandboxSingle(BaseModel):
    success: bool = True
    status: str = "success"
    message: str
    data: SandboxPublic


class PublicUrl(BaseModel):
    port: int
    url: str
    public: bool = Field(False, description="Extension: reachable without credentials.")
    trafficToken: str | None = Field(  # noqa: N815 - wire name
        None, description="Extension: opens the sandbox's private ports (docs/previews.md)."
    )


class ImagePublic(WireModel):
    id: str
    name: str
    tag: str
    size_gb: int = Field(serialization_alias="sizeGB", validation_alias="sizeGB")
    system: bool
    active: bool
    org_id: str | None
    created_at: datetime
    created_by: str | None
    description: str
    status: str = Field("ready", description="Extension: building, ready or error.")
    error: str | None = Field(None, description="Extension: why the build failed.")
    progress: int = Field(100, description="Extension: percent of the build done.")
    source: str = Field("", description="Extension: where an imported image came from.")
    config: dict[str, Any] | None = Field(
        None, description="Extension: env, workingDir, user, entrypoint, cmd of the image."
    )
    log: list[str] | None = Field(
        None, description="Extension (GET of one image): the build's last log lines."
    )
    parent_id: str | None = Field(
        None, description="Extension: for a snapshot, the image its layer lies over."
    )


class SandboxFork(BaseModel):
    """Extension: the answer of ``POST /api/sandboxes/{id}/fork``."""

    status: str = "success"
    message: str
    data: list[SandboxPublic]
    image: ImagePublic = Field(description="The snapshot the new sandboxes were made from.")
