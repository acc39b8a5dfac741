"""The isolation settings: the default must be offered, pools only for offered ones."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from voidrun_server.config import Settings


def test_default_must_be_offered() -> None:
    with pytest.raises(ValidationError, match="VOIDRUN_DRIVER"):
        Settings(driver="gvisor", isolations=["namespace"])
    with pytest.raises(ValidationError, match="VOIDRUN_WARM_POOL_SIZES"):
        Settings(isolations=["namespace"], warm_pool_sizes={"gvisor": 1})
    settings = Settings(isolations=["namespace", "gvisor"], warm_pool_sizes={"gvisor": 1})
    assert settings.warm_pool_size_for("gvisor") == 1
    assert settings.warm_pool_size_for("namespace") == settings.warm_pool_size
