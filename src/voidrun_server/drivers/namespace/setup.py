"""The namespace driver from the server's settings (``drivers.registry.build_driver``)."""

from __future__ import annotations

import functools
from pathlib import Path

from voidrun_server.agent_launch import agent_argv
from voidrun_server.agent_runtime import Runtime, zygote_config
from voidrun_server.config import Settings
from voidrun_server.drivers.base import NetworkPolicy
from voidrun_server.drivers.namespace.driver import NamespaceDriver
from voidrun_server.drivers.namespace.network import NetworkConfig
from voidrun_server.drivers.namespace.resolver import host_resolvers
from voidrun_server.drivers.netshare import NetworkShare

__all__ = ["build", "network_config", "state_dir"]


def network_config(settings: Settings) -> NetworkConfig | None:
    """How sandboxes are wired (docs/network.md); None when ``VOIDRUN_SANDBOX_NETWORK`` is off."""
    if not settings.sandbox_network:
        return None
    return NetworkConfig(
        subnet=settings.sandbox_subnet,
        upstreams=tuple(settings.sandbox_dns_upstreams) or host_resolvers(),
        default_policy=NetworkPolicy(allow_internet=settings.sandbox_internet_default),
        allowed_private=tuple(settings.sandbox_allowed_private_cidrs),
        bandwidth_mbit=settings.sandbox_bandwidth_mbit,
    )


def state_dir(settings: Settings) -> Path:
    return settings.sandboxes_dir


def build(
    settings: Settings,
    *,
    agent_dir: Path,
    runtime: Runtime,
    network: NetworkShare | None = None,
) -> NamespaceDriver:
    """``network``: the server's shared sandbox network (one of its own when None)."""
    return NamespaceDriver(
        state_dir=state_dir(settings),
        uid_base=settings.sandbox_uid_base,
        uid_ranges=settings.sandbox_uid_ranges,
        cgroup_parent=settings.cgroup_parent,
        agent_argv=functools.partial(agent_argv, python=runtime.python_argv()),
        agent_dir=agent_dir,
        runtime_dir=runtime.host_dir,
        ready_timeout=settings.sandbox_ready_timeout_seconds,
        pids_max=settings.sandbox_pids_max,
        networking=(network or NetworkShare(settings)).get,  # called after its checks
        ca_bundle=settings.sandbox_ca_bundle,
        zygote=zygote_config(runtime, agent_dir) if settings.agent_zygote else None,
    )
