"""Protobuf's JSON mapping, as much of it as envd's messages use: lowerCamelCase names (the
proto names are accepted too), ``bytes`` as base64, 64-bit integers as strings, enums by
name (numbers accepted), timestamps as RFC 3339. Requests parse into pydantic models; a
malformed one is ``invalid_argument``."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from .connect import Message, RpcError

M = TypeVar("M", bound="In")


class In(BaseModel):
    model_config = ConfigDict(
        extra="ignore", populate_by_name=True, alias_generator=to_camel, frozen=True
    )


def parse(model: type[M], message: Message) -> M:
    try:
        return model.model_validate(message)
    except ValidationError as exc:
        problems = exc.errors()
        if not problems:
            raise RpcError("invalid_argument", "invalid message") from exc
        where = ".".join(str(p) for p in problems[0]["loc"])
        raise RpcError("invalid_argument", f"{where}: {problems[0]['msg']}") from exc


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(value: str) -> bytes:
    try:
        padded = value + "=" * (-len(value) % 4)
        return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RpcError("invalid_argument", "bytes must be base64") from exc


def timestamp(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Bytes(In):
    """A oneof of bytes fields (``ProcessInput``): the one set, decoded."""

    stdin: str | None = None
    pty: str | None = None

    @field_validator("stdin", "pty")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            unb64(value)
        return value


def enum_value(value: Any, names: dict[str, int]) -> int:
    if isinstance(value, bool):
        raise RpcError("invalid_argument", "enum values are names or numbers")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value in names:
        return names[value]
    raise RpcError("invalid_argument", f"unknown enum value {value!r}")
