"""Identifiers: 24-hex ids like the reference server's ObjectIDs, and API key material.

Ids start with a 4-byte big-endian timestamp, so they sort by creation second; the other
8 bytes are fresh randomness per id. There is deliberately no counter: a counter shared by every
org would let one tenant read how many objects all tenants create per second from two of its
own ids. Within one second ids are in random order, so "newest first" lists sort by
``(created_at, id)``, not by id alone.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time

API_KEY_PREFIX = "vr_"
CONFIGURED_KEY_MIN_CHARS = 32
CONFIGURED_KEY_MIN_DISTINCT = 16
_BASE64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
GENERATE_KEY_HINT = (
    "generate one with: python3 -c 'import secrets; print(\"vr_\" + secrets.token_urlsafe(32))'"
)


def new_id() -> str:
    """A 24-hex id: 4 bytes of seconds, then 8 random bytes (64 bits: collisions within one
    second need ~2^32 ids)."""
    seconds = int(time.time()).to_bytes(4, "big")
    return (seconds + secrets.token_bytes(8)).hex()


def is_id(value: str) -> bool:
    return len(value) == 24 and all(c in "0123456789abcdef" for c in value)


def new_api_key() -> str:
    """``vr_`` + 43 chars of unpadded base64url (32 random bytes)."""
    raw = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return API_KEY_PREFIX + raw


def configured_key_problem(plain: str) -> str | None:
    """Why a key chosen by an operator (``VOIDRUN_BOOTSTRAP_API_KEY``) is too weak, or None.

    Keys are stored as plain SHA-256 digests, which is only safe for keys nobody can guess. The
    rule is deliberately simple: ``vr_`` followed by at least 32 base64url characters of which
    at least 16 are different. 32 random base64url characters always pass (~190 bits); names,
    words with a number and repeated characters (``vr_my_known_key_123``, ``vr_aaaa…``) do not.
    """
    if not plain.startswith(API_KEY_PREFIX):
        return f"it must start with {API_KEY_PREFIX!r}"
    body = plain[len(API_KEY_PREFIX) :]
    if len(body) < CONFIGURED_KEY_MIN_CHARS:
        return f"it needs at least {CONFIGURED_KEY_MIN_CHARS} characters after 'vr_'"
    if not set(body) <= _BASE64URL:
        return "only base64url characters (A-Z a-z 0-9 - _) may follow 'vr_'"
    if len(set(body)) < CONFIGURED_KEY_MIN_DISTINCT:
        return f"it needs at least {CONFIGURED_KEY_MIN_DISTINCT} different characters"
    return None


def hash_api_key(plain: str) -> str:
    """Keys carry 256 bits of entropy, so a plain SHA-256 is enough and allows O(1) lookup."""
    return hashlib.sha256(plain.encode()).hexdigest()


def mask_api_key(plain: str) -> str:
    return f"{plain[:7]}…{plain[-4:]}" if len(plain) > 12 else "…"
