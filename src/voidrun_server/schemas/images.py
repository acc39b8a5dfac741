"""Image imports on the wire (CreateImageRequest of the seed, plus extensions)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from .common import WireModel


class RegistryCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=256)
    password: SecretStr = Field(max_length=4096)


class ImageCreate(WireModel):
    """Seed ``CreateImageRequest {name, version, path}``; ``source``, ``credentials`` and
    ``insecure`` are extensions for registry references."""

    model_config = ConfigDict(
        alias_generator=WireModel.model_config.get("alias_generator"),
        populate_by_name=True,
        extra="forbid",
    )

    name: str = Field(description="Image name: lowercase letters, digits, '.', '_', '-'.")
    version: str | None = Field(None, description="Tag; default `latest`.")
    path: str | None = Field(
        None,
        description=(
            "Host path under VOIDRUN_IMAGE_IMPORT_DIRS: an OCI image layout (`dir` or "
            "`dir:tag`), an OCI or docker-save tarball (plain or gzip), or a rootfs directory."
        ),
    )
    source: str | None = Field(
        None, max_length=1024, description="Extension: a registry reference (host/repo:tag)."
    )
    credentials: RegistryCredentials | None = Field(
        None, description="Extension: registry login; used for this pull only, never stored."
    )
    insecure: bool = Field(
        False,
        description="Extension: allow plain HTTP; honoured for VOIDRUN_IMAGE_INSECURE_REGISTRIES.",
    )


class ImageConfigPublic(WireModel):
    env: list[str] = []
    working_dir: str = ""
    user: str = ""
    entrypoint: list[str] = []
    cmd: list[str] = []


class SnapshotCreate(WireModel):
    """Extension: ``POST /api/sandboxes/{id}/snapshot``. Checked once the sandbox is found
    (an unknown sandbox is 404 whatever the body)."""

    name: str | None = Field(
        None, description="Required. Name of the new image: a-z, 0-9, '.', '_', '-'."
    )
    version: str | None = Field(None, description="Its tag; default `latest`.")


class ForkCreate(WireModel):
    """Extension: ``POST /api/sandboxes/{id}/fork``. Checked once the sandbox is found."""

    count: int | None = Field(
        None, description="Required. How many sandboxes to create from the snapshot: 1..20."
    )
