"""Traffic tokens: what lets a browser or a webhook reach a sandbox's private ports without an
API key.

A token is ``vrt_`` + an HMAC-SHA256 of the sandbox id under a server secret, base64url: it opens
that one sandbox's declared ports and nothing else (no API route accepts it), needs no database
row, and lives as long as the sandbox. The secret (32 random bytes) is made on first use in
``<data dir>/preview-secret``, mode 0600; deleting that file (and restarting) revokes every
token at once. Servers that share a database but not a data dir have different secrets, so a
token works on the node that issued it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

__all__ = ["ENVD_PURPOSE", "PREVIEW_PURPOSE", "TOKEN_PREFIX", "TrafficTokens"]

TOKEN_PREFIX = "vrt_"
SECRET_BYTES = 32
# What a token opens; one secret, one HMAC per purpose, so a token of one purpose never
# passes for another. The preview purpose's bytes are those of the first release: its tokens
# stay valid.
PREVIEW_PURPOSE = b"voidrun preview traffic token\0"
ENVD_PURPOSE = b"voidrun e2b envd access token\0"  # the E2B API's envdAccessToken
_PREFIXES = {PREVIEW_PURPOSE: TOKEN_PREFIX, ENVD_PURPOSE: "vre_"}


class TrafficTokens:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"the preview secret must be at least {SECRET_BYTES} bytes")
        self._secret = secret

    @classmethod
    def load(cls, path: Path) -> TrafficTokens:
        """The secret in ``path``, made (0600, never replaced) if missing. Blocking."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(SECRET_BYTES))
        os.chmod(path, 0o600)  # a copy restored from a backup must not stay readable
        secret = path.read_bytes()
        if len(secret) < SECRET_BYTES:
            raise ValueError(f"{path} holds {len(secret)} bytes; delete it to make a new secret")
        return cls(secret)

    def token_for(self, sandbox_id: str, purpose: bytes = PREVIEW_PURPOSE) -> str:
        digest = hmac.new(self._secret, purpose + sandbox_id.encode(), hashlib.sha256).digest()
        return _PREFIXES[purpose] + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def check(self, sandbox_id: str, token: str, purpose: bytes = PREVIEW_PURPOSE) -> bool:
        expected = self.token_for(sandbox_id, purpose).encode()
        return hmac.compare_digest(expected, token.encode("utf-8", "replace"))
