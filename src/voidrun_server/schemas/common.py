"""Envelope and error shapes (CONTRACT §1.3, §1.4)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

T = TypeVar("T")


class WireModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class Envelope(BaseModel, Generic[T]):
    status: str = "success"
    message: str
    data: T | None = None


class MessageEnvelope(BaseModel):
    status: str = "success"
    message: str


def envelope(message: str, data: Any = None, meta: Any = None) -> dict[str, Any]:
    """The ``{"status","message","data"?,"meta"?}`` family; absent parts are omitted."""
    body: dict[str, Any] = {"status": "success", "message": message}
    if data is not None:
        body["data"] = data
    if meta is not None:
        body["meta"] = meta
    return body
