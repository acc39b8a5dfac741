"""Background commands, shell sessions and PTYs on the wire (CONTRACT §2.3, §A.5, §B.2–§B.5).

Numbers the SDK sends as JSON integers are validated strictly (``"5"`` or ``5.0`` for a pid is
a 400, not a silent coercion); ``null`` is treated as absent everywhere.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, Field

from .common import WireModel

MAX_BACKGROUND_TIMEOUT = 900

Pid = Annotated[int, Field(strict=True, ge=1, description="Process id from `commands/run`.")]
Cols = Annotated[int, Field(strict=True, ge=1, le=500)]
Rows = Annotated[int, Field(strict=True, ge=1, le=200)]


class CommandRunRequest(WireModel):
    command: str | None = Field(None, description="Run with `bash -c`; required.")
    env: dict[str, str] | None = Field(None, description="Extra environment variables.")
    cwd: str | None = Field(None, description="Working directory; default /root.")
    user: str | None = Field(
        None,
        description="Extension: run as this user of the image (`name`, `uid`, `name:group`, "
        "`uid:gid`); default: the image config's `User`, else root.",
    )
    timeout: int | None = Field(
        None,
        strict=True,
        ge=0,
        le=MAX_BACKGROUND_TIMEOUT,
        description="Seconds, 0..900; 0 or absent means no limit. A timed-out command's group "
        "is killed and its exit code is 124.",
    )


class PidRequest(WireModel):
    pid: Pid


class CommandStdinRequest(WireModel):
    """Extension: feed the background command's stdin."""

    pid: Pid
    data: str = Field("", description="Text written as UTF-8.")
    eof: bool = Field(False, strict=True, description="Close stdin after writing `data`.")


class CommandRunResponse(WireModel):
    success: bool = True
    pid: int
    command: str


class ProcessInfo(WireModel):
    pid: int
    command: str
    start_time: datetime
    running: bool
    exit_code: int | None = Field(None, description="Omitted while running.")


class CommandListResponse(WireModel):
    success: bool = True
    processes: list[ProcessInfo]


class CommandKillResponse(WireModel):
    success: bool = True
    message: str = "Process killed"


class CommandStdinResponse(WireModel):
    success: bool = True
    message: str = "Input written"


class CommandWaitResponse(WireModel):
    success: bool = True
    exit_code: int
    error: str | None = None


class SessionExecRequest(WireModel):
    action: str | None = Field(None, description="create, exec, input, resize or close.")
    session_id: str | None = Field(None, description="≤100 chars; generated on create if absent.")
    shell: str | None = Field(
        None, description="create: the shell to run; default the image's bash, else sh."
    )
    user: str | None = Field(
        None,
        description="create (extension): the session's user (`name`, `uid`, `name:group`); "
        "default: the image config's `User`, else root.",
    )
    command: str | None = Field(None, description="exec: the command line.")
    input: str | None = Field(None, description="input: raw text written to the shell.")
    cols: Cols | None = None
    rows: Rows | None = None
    timeout: int | None = Field(
        None, strict=True, ge=0, le=3600, description="exec (extension): seconds, default 300."
    )


class SessionExecResponse(WireModel):
    success: bool = True
    session_id: str | None = None
    output: str | None = None
    error: str | None = None
    exit_code: int | None = None


class SessionExecStreamRequest(WireModel):
    session_id: str | None = Field(None, description="Required, ≤100 chars.")
    command: str | None = Field(None, description="Required.")
    timeout: int | None = Field(
        None, strict=True, ge=0, le=3600, description="Extension: seconds, default 300."
    )


class CreatePTYSessionRequest(WireModel):
    cols: Cols = 80
    rows: Rows = 24


class PTYSessionCreated(WireModel):
    session_id: str
    created_at: datetime


class PTYSessionInfo(WireModel):
    id: str
    created_at: datetime
    clients: int
    alive: bool


class PTYSessionList(WireModel):
    sessions: list[PTYSessionInfo]


class PTYBuffer(BaseModel):
    output: str


class ExecuteInSessionRequest(WireModel):
    command: str | None = Field(None, description="Written to the terminal, then a newline.")


class ResizeTerminalRequest(WireModel):
    cols: Cols
    rows: Rows


class DataEnvelope(BaseModel):
    """``{"status","message","data"}`` for the OpenAPI document."""

    status: str = "success"
    message: str
    data: Any = None
