"""Settings -> :class:`GvisorDriver` (the app calls :func:`build`; tests call the constructor)."""

from __future__ import annotations

import functools
from pathlib import Path

from voidrun_server.agent_launch import agent_argv
from voidrun_server.agent_runtime import Runtime
from voidrun_server.config import Settings
from voidrun_server.drivers.gvisor.driver import GvisorDriver
from voidrun_server.drivers.netshare import NetworkShare

__all__ = ["build", "state_dir"]


def state_dir(settings: Settings) -> Path:
    return settings.data_dir / "gvisor"


def build(
    settings: Settings,
    *,
    agent_dir: Path,
    runtime: Runtime,
    network: NetworkShare | None = None,
) -> GvisorDriver:
    """``network``: the server's shared sandbox network (one of its own when None)."""
    return GvisorDriver(
        state_dir(settings),
        agent_argv=functools.partial(agent_argv, python=runtime.python_argv()),
        agent_dir=agent_dir,
        runtime_dir=runtime.host_dir,
        runsc_path=settings.gvisor_runsc_path or None,
        platform=None if settings.gvisor_platform == "auto" else settings.gvisor_platform,
        probe_timeout=settings.gvisor_probe_timeout_seconds,
        probe_cache=settings.runtime_root,  # host-wide, like the agent runtime beside it
        ready_timeout=settings.sandbox_ready_timeout_seconds,
        pids_max=settings.sandbox_pids_max,
        cgroup_parent=f"{settings.cgroup_parent}-gvisor",
        networking=(network or NetworkShare(settings)).get,  # called after its checks
    )
