"""Settings and identifiers."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from voidrun_server import ids
from voidrun_server.config import Settings, StatusDialect


def test_every_setting_is_documented() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, f"VOIDRUN_{name.upper()} has no description"


def test_environment_prefix_and_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOIDRUN_PORT", "9123")
    monkeypatch.setenv("VOIDRUN_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOIDRUN_STATUS_DIALECT", "sdk")
    settings = Settings()
    assert settings.port == 9123 and settings.host == "127.0.0.1"
    assert settings.status_dialect is StatusDialect.SDK
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/voidrun.db"


def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOIDRUN_PORT", "0")
    with pytest.raises(ValueError):
        Settings()


def test_describe_masks_secrets(tmp_path: Path) -> None:
    key = "vr_" + secrets.token_urlsafe(32)
    settings = Settings(data_dir=tmp_path, bootstrap_api_key=key)
    rows = {name: value for name, value, _ in settings.describe()}
    assert rows["VOIDRUN_BOOTSTRAP_API_KEY"] == "********"
    assert key not in str(rows)


@pytest.mark.parametrize(
    "weak",
    [
        "vr_my_known_key_123",  # the old README example
        "vr_" + "a" * 43,  # long but one character
        "vr_abababababababababababababababab",  # long, two characters
        "my_" + secrets.token_urlsafe(32),  # wrong prefix
        "vr_" + secrets.token_urlsafe(32)[:31],  # one character short
        "vr_" + secrets.token_urlsafe(30) + "!!",  # outside base64url
    ],
)
def test_weak_bootstrap_keys_fail_startup(weak: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        Settings(data_dir=tmp_path, bootstrap_api_key=weak)
    message = str(caught.value)
    assert "VOIDRUN_BOOTSTRAP_API_KEY" in message and "secrets.token_urlsafe(32)" in message
    assert weak not in message  # the secret is not echoed


def test_random_bootstrap_keys_pass() -> None:
    for _ in range(200):
        assert ids.configured_key_problem("vr_" + secrets.token_urlsafe(32)) is None
        assert ids.configured_key_problem("vr_test_" + secrets.token_urlsafe(24)) is None
        assert ids.configured_key_problem(ids.new_api_key()) is None


def test_ids_sort_by_creation_and_are_hex() -> None:
    made = [ids.new_id() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert all(ids.is_id(i) for i in made)
    assert not ids.is_id("x" * 24) and not ids.is_id("abc")


def test_ids_reveal_no_counter() -> None:
    """The 8 bytes after the timestamp are random per id: no shared counter to read rates from."""
    tails = [int(ids.new_id()[8:], 16) for _ in range(100)]
    assert len(set(tails)) == 100
    steps = {b - a for a, b in zip(tails, tails[1:], strict=False)}
    assert len(steps) > 90  # a counter gives one constant step (or a few)
    assert all(abs(step) > 1000 for step in steps)  # not consecutive
    heads = [ids.new_id()[:8] for _ in range(3)]
    assert heads == sorted(heads)  # still ordered by creation second


def test_api_key_format_and_hash() -> None:
    key = ids.new_api_key()
    assert re.fullmatch(r"vr_[A-Za-z0-9_-]{43}", key)
    assert ids.hash_api_key(key) == ids.hash_api_key(key) != ids.hash_api_key(key + "x")
    assert key not in ids.mask_api_key(key)


def test_every_setting_is_in_the_configuration_doc() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`VOIDRUN_{name.upper()}`" in doc, f"document VOIDRUN_{name.upper()}"
