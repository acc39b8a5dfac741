"""One settings object for the whole server.

Every field is read from the environment with the ``VOIDRUN_`` prefix (``VOIDRUN_PORT=9000``), or
from a ``.env`` file in the working directory. The object is built once at start-up and passed
explicitly to whatever needs it; nothing reads the environment behind its back.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StatusDialect(StrEnum):
    """How lifecycle states are named in responses (CONTRACT decision 1)."""

    AUTO = "auto"
    SEED = "seed"
    SDK = "sdk"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="VOIDRUN_", env_file=".env", extra="ignore", validate_default=True
    )

    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(8080, description="HTTP port.")
    data_dir: Path = Field(
        Path("~/.voidrun"),
        description="Where the database, images, sandbox disks and the bootstrap key live.",
    )
    database_url: str = Field(
        "",
        description=(
            "SQLAlchemy async URL. Empty means SQLite at <data_dir>/voidrun.db; use "
            "postgresql+asyncpg://user:pass@host/db to share one database between nodes."
        ),
    )
    bootstrap_api_key: SecretStr | None = Field(
        None,
        description=(
            "If set, this key is created (org 'default', user 'admin') on start when it does not "
            "exist yet. If unset and the database has no org, a key is generated, printed once "
            "and written to <data_dir>/bootstrap-key (mode 0600)."
        ),
    )
    status_dialect: StatusDialect = Field(
        StatusDialect.AUTO,
        description=(
            "auto: report paused/stopped as 'snapshotted' to the official Python SDK (User-Agent "
            "VoidRun-Python-SDK/...), seed names to everyone else; seed: always seed names; "
            "sdk: always SDK names."
        ),
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    max_json_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        2 * 1024 * 1024,
        description="Largest JSON request body accepted; larger bodies get 413.",
    )
    max_url_bytes: Annotated[int, Field(ge=256)] = Field(
        16 * 1024, description="Longest request target (path + query) accepted; longer get 414."
    )
    key_touch_interval_seconds: Annotated[float, Field(ge=0)] = Field(
        30.0,
        description=(
            "An API key's lastUsedAt is refreshed at most this often, so authentication does not "
            "write to the database on every request."
        ),
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    cors_origins: list[str] = Field(
        ["*"], description="Origins allowed by CORS (the reference server allows all)."
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser().absolute()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.data_dir / 'voidrun.db'}"

    @property
    def bootstrap_key_file(self) -> Path:
        return self.data_dir / "bootstrap-key"

    def describe(self) -> list[tuple[str, str, str]]:
        """(env var, current value, description) for every field; secrets are masked."""
        rows = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                shown = "********"
            elif value is None:
                shown = ""
            else:
                shown = str(value.value if isinstance(value, StrEnum) else value)
            rows.append((f"VOIDRUN_{name.upper()}", shown, field.description or ""))
        return rows
