"""Identifiers: 24-hex ids like the reference server's ObjectIDs, and API key material.

Ids start with a 4-byte big-endian timestamp, so sorting by id is sorting by creation time
(the list endpoints rely on that for "newest first").
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import os
import secrets
import time

_counter = itertools.count(int.from_bytes(os.urandom(3), "big"))
_process_random = os.urandom(5)

API_KEY_PREFIX = "vr_"


def new_id() -> str:
    """A 24-hex id: 4 bytes of seconds, 5 bytes per-process random, 3 bytes counter."""
    seconds = int(time.time()).to_bytes(4, "big")
    count = (next(_counter) & 0xFFFFFF).to_bytes(3, "big")
    return (seconds + _process_random + count).hex()


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
