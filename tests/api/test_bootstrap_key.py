"""The configured bootstrap key: it must look random, and once revoked it stays revoked."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.http import assert_error
from tests.support.server import ServerProcess


def test_revoked_bootstrap_key_is_not_revived_on_restart(db_url: str, tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", database_url=db_url).start()
    try:
        with server.client() as admin:
            keys = admin.get("/orgs/apikeys").json()
            bootstrap = next(k for k in keys if k["name"] == "bootstrap")
            assert admin.delete(f"/orgs/apikeys/{bootstrap['id']}").status_code == 200
            assert_error(admin.get("/users/me"), 401)
        server.stop()
        server.start()  # same VOIDRUN_BOOTSTRAP_API_KEY in the environment
        with server.client() as admin:
            assert_error(admin.get("/users/me"), 401)
        assert "was revoked and is not re-created" in server.log_path.read_text()
    finally:
        server.stop()


@pytest.mark.parametrize("weak", ["vr_my_known_key_123", "vr_" + "k" * 40])
def test_weak_configured_key_fails_startup(weak: str, tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", api_key=weak)
    with pytest.raises(RuntimeError) as failed:
        server.start()
    log = str(failed.value)
    assert "VOIDRUN_BOOTSTRAP_API_KEY is too weak" in log
    assert "secrets.token_urlsafe(32)" in log and weak not in log
