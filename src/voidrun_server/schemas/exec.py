"""Command execution on the wire (CONTRACT §2.3 ExecRequest, §A.5)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ExecRequest(BaseModel):
    """``null`` fields are treated as absent (the SDK's exec-stream sends explicit nulls)."""

    command: str | None = Field(None, description="Run with `bash -c`; required, ≤100 000 chars.")
    args: list[str] | None = Field(None, description="Accepted for compatibility and ignored.")
    timeout: int | None = Field(None, description="Seconds, 1..300; 0 or absent means 30.")
    env: dict[str, str] | None = Field(None, description="Extra environment variables.")
    cwd: str | None = Field(None, description="Working directory; default /root.")
    user: str | None = Field(
        None,
        description="Extension: run as this user of the image (`name`, `uid`, `name:group`, "
        "`uid:gid`); default: the image config's `User`, else root.",
    )


class ExecData(BaseModel):
    stdout: str
    stderr: str
    exitCode: int  # noqa: N815 - wire name
    stdoutTruncated: bool | None = None  # noqa: N815
    stderrTruncated: bool | None = None  # noqa: N815


class ExecResponse(BaseModel):
    status: str = "success"
    message: str = "ok"
    data: ExecData
