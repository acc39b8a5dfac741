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


def hash_api_key(plain: str) -> str:
    """Keys carry 256 bits of entropy, so a plain SHA-256 is enough and allows O(1) lookup."""
    return hashlib.sha256(plain.encode()).hexdigest()


def mask_api_key(plain: str) -> str:
    return f"{plain[:7]}…{plain[-4:]}" if len(plain) > 12 else "…"
