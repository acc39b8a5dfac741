"""Wire shapes of the File System routes (CONTRACT §A.6, §B.6).

The SDK validates strictly (§1.7): ``size``/``exitCode`` are JSON ints, ``FileInfo.mode`` is a
string like ``-rw-r--r--``, ``sessionId`` is a UUID, datetimes are ISO strings.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .common import Envelope, WireModel


class FileInfo(WireModel):
    name: str
    path: str
    size: int
    mode: str = Field(description="ls-style permission string, e.g. -rw-r--r--.")
    is_dir: bool
    mod_time: datetime


class FileList(WireModel):
    success: bool = True
    files: list[FileInfo]


class ExecData(WireModel):
    """What the shell tool would have printed: failures are a non-zero ``exitCode``."""

    stdout: str
    stderr: str
    exit_code: int


class Uploaded(WireModel):
    path: str
    size: int


class WatchRequest(WireModel):
    """``null`` means "use the default" for the flags (the SDK may send explicit nulls)."""

    path: str = Field(min_length=1)
    recursive: bool | None = False
    ignore_hidden: bool | None = True


class WatchStarted(WireModel):
    session_id: str = Field(description="UUID4; open the stream WebSocket with it.")


class CreateFileBody(WireModel):
    content: str | None = None


FileListEnvelope = Envelope[FileList]
ExecEnvelope = Envelope[ExecData]
UploadEnvelope = Envelope[Uploaded]
WatchEnvelope = Envelope[WatchStarted]
