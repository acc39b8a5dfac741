"""The HTTP side of ``voidrun-server sandboxes``: where the server is, which API key, and
errors that say what to do next.

Unlike the account commands, which open the database, these commands are an API client of a
running server (like E2B's and Daytona's CLIs): the same public routes an SDK uses, with an
API key of the org whose sandboxes they show.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from .. import __version__
from ..config import Settings

USER_AGENT = f"voidrun-server-cli/{__version__}"
KEY_ENV = "VOIDRUN_API_KEY"
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ApiError(Exception):
    """A failure to show the user as it is: what went wrong and what to do."""


@dataclass(frozen=True)
class Target:
    """A server's API base URL (``…/api``), the API key and where that key came from."""

    url: str
    key: str
    key_source: str

    def ws_url(self, path: str) -> str:
        """A WebSocket URL of ``path``; the key goes in the query (CONTRACT §B.5)."""
        base = "ws" + self.url.removeprefix("http") if self.url.startswith("http") else self.url
        return f"{base}{path}?apiKey={quote(self.key, safe='')}"


def default_url(settings: Settings) -> str:
    """``http://VOIDRUN_HOST:VOIDRUN_PORT/api``, a wildcard bind address as loopback."""
    host = WILDCARD_HOSTS.get(settings.host, settings.host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.port}/api"


def resolve_key(explicit: str | None, settings: Settings) -> tuple[str, str]:
    """(key, where it came from): ``--api-key`` / ``VOIDRUN_API_KEY``, else the server's own
    bootstrap key (``VOIDRUN_BOOTSTRAP_API_KEY`` or the data dir's ``bootstrap-key`` file,
    readable by the operator on the server's host)."""
    if explicit:
        source = KEY_ENV if os.environ.get(KEY_ENV) == explicit else "--api-key"
        return explicit.strip(), source
    if settings.bootstrap_api_key is not None:
        return settings.bootstrap_api_key.get_secret_value(), "VOIDRUN_BOOTSTRAP_API_KEY"
    path = settings.bootstrap_key_file
    try:
        plain = path.read_text().strip()
    except OSError:
        plain = ""
    if plain:
        return plain, str(path)
    raise ApiError(
        f"No API key: pass --api-key or set {KEY_ENV} (the server's first key is in "
        f"{path}; an operator makes more with: voidrun-server keys create --org ORG --name NAME)."
    )


@contextmanager
def session(target: Target, timeout: float | None = 30.0) -> Iterator[httpx.Client]:
    """An HTTP client of ``target``; a server that cannot be reached is an :class:`ApiError`."""
    headers = {"X-API-Key": target.key, "User-Agent": USER_AGENT}
    client = httpx.Client(base_url=target.url, headers=headers, timeout=timeout)
    try:
        with client:
            yield client
    except httpx.TransportError as exc:
        raise unreachable(target, exc) from exc


def unreachable(target: Target, exc: Exception) -> ApiError:
    if isinstance(exc, httpx.TimeoutException):
        return ApiError(f"The server at {target.url} did not answer in time ({exc!r}).")
    return ApiError(
        f"Cannot reach the server at {target.url} ({exc}). Is it running? Start it with "
        "`voidrun-server serve`, or point --url at it."
    )


def error_body(status: int, text: str) -> tuple[str, str]:
    """(error, details) of an error response; a body not in the API's shape as it is."""
    try:
        body: Any = httpx.Response(status, text=text).json()
    except ValueError:
        return text.strip()[:200] or f"HTTP {status}", ""
    if not isinstance(body, dict):
        return str(body)[:200], ""
    return str(body.get("error") or f"HTTP {status}"), str(body.get("details") or "")


def refusal(target: Target, status: int, text: str, sandbox_id: str | None = None) -> ApiError:
    """The :class:`ApiError` for an HTTP error answer."""
    error, details = error_body(status, text)
    said = f"{error}: {details}" if details else error
    if status == 401:
        return ApiError(
            f"The server refused the API key from {target.key_source} ({said}). Pass a valid "
            f"key with --api-key or {KEY_ENV}; an operator makes one with: "
            "voidrun-server keys create --org ORG --name NAME"
        )
    if status == 404 and sandbox_id is not None and "sandbox" in error.lower():
        return ApiError(
            f"No sandbox {sandbox_id} in this API key's org ({said}). "
            "See the sandboxes with: voidrun-server sandboxes list"
        )
    if status == 404 and error.lower() == "not found":
        return ApiError(f"{target.url} answered 404 {said}: is --url the API's base (…/api)?")
    return ApiError(f"The server answered {status}: {said}")


def checked(
    target: Target, response: httpx.Response, sandbox_id: str | None = None
) -> dict[str, Any]:
    """The JSON object of a 2xx answer, else the :class:`ApiError` that says why."""
    if response.is_error:
        raise refusal(target, response.status_code, response.text, sandbox_id)
    try:
        body = response.json()
    except ValueError as exc:
        raise ApiError(
            f"{target.url} answered {response.status_code} without JSON: is --url the "
            "API's base (…/api) of a voidrun-server?"
        ) from exc
    if not isinstance(body, dict):
        raise ApiError(f"{target.url} answered an unexpected body: {str(body)[:200]}")
    return body
