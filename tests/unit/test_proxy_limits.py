"""The preview proxy's connection limits and its idle-connection pool, without sandboxes."""

from __future__ import annotations

import pytest

from voidrun_server.errors import ServiceUnavailableError, TooManyConnectionsError
from voidrun_server.services.proxy import ConnectionLimits, Target


def target(sandbox: str, org: str) -> Target:
    return Target(sandbox_id=sandbox, org_id=org, port=8000, public=False)


def test_limits_per_sandbox_per_org_and_in_all() -> None:
    limits = ConnectionLimits(per_sandbox=2, per_org=3, total=4)
    with limits.hold(target("a", "x")), limits.hold(target("a", "x")):
        with pytest.raises(TooManyConnectionsError, match="per sandbox"):
            with limits.hold(target("a", "x")):
                pass
        with limits.hold(target("b", "x")):
            with pytest.raises(TooManyConnectionsError, match="per org"):
                with limits.hold(target("c", "x")):
                    pass
            with limits.hold(target("d", "y")):  # 4 open: the server's limit
                with pytest.raises(ServiceUnavailableError, match="on this server") as full:
                    with limits.hold(target("e", "z")):
                        pass
                assert "at most 4" in str(full.value.details)
    assert limits.open == 0
    with limits.hold(target("e", "z")):  # every slot came back
        assert limits.open == 1
