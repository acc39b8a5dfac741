"""Assertions shared by HTTP tests."""

from __future__ import annotations

import httpx


def assert_error(response: httpx.Response, status: int) -> dict[str, str]:
    """The response is ``status`` with a JSON ``{"error", "details"?}`` body; returns it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "details"}
    assert isinstance(body.get("details", ""), str)
    return dict(body)
