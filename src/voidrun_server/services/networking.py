"""Sandbox networking for the services layer: policy requests
(checked into a 400 with every problem, before anything is created) and usage metrics.

The policy itself is enforced by the driver (``drivers/namespace/network.py``); the row keeps
what the caller asked for, in wire form, and the driver its own copy (it never reads rows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from ..config import Settings
from ..drivers import netpolicy
from ..drivers.base import NetworkPolicy, NetworkUsage
from ..drivers.driverset import DriverSet
from ..errors import InvalidInputError
from ..schemas.sandboxes import NetworkSpec

__all__ = ["NetworkUsage", "UsageCollector", "default_policy", "requested_policy"]


def default_policy(settings: Settings) -> NetworkPolicy:
    return NetworkPolicy(allow_internet=settings.sandbox_internet_default)


def requested_policy(
    settings: Settings,
    drivers: DriverSet,
    isolation: str,
    spec: NetworkSpec | None,
    current: NetworkPolicy | None,
) -> NetworkPolicy | None:
    """The policy a create (``current`` None) or an update asks for; None when the
    isolation's driver has no networking and nothing was asked. Fields absent from ``spec``
    keep ``current`` (or the server default). Raises InvalidInputError listing every problem."""
    if drivers.networked(isolation) is None:
        if spec is not None:
            raise InvalidInputError(
                "Invalid network policy",
                f"the {isolation} isolation of this server has no sandbox networking "
                "(VOIDRUN_SANDBOX_NETWORK, docs/isolation.md)",
            )
        return None
    base = current or default_policy(settings)
    if spec is None:
        return base
    allow = base.allow_out if spec.allow_out is None else tuple(spec.allow_out)
    deny = base.deny_out if spec.deny_out is None else tuple(spec.deny_out)
    problems = netpolicy.problems("allowOut", allow) + netpolicy.problems("denyOut", deny)
    if len(allow) + len(deny) > netpolicy.MAX_ENTRIES:
        problems.append(f"at most {netpolicy.MAX_ENTRIES} entries in allowOut and denyOut")
    if problems:
        raise InvalidInputError("Invalid network policy", "; ".join(problems))
    internet = spec.allow_internet_access
    return NetworkPolicy(
        allow_internet=base.allow_internet if internet is None else internet,
        allow_out=_unique(netpolicy.normalise(e) for e in allow),
        deny_out=_unique(netpolicy.normalise(e) for e in deny),
    )


def _unique(entries: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(entries))


class UsageCollector(Collector):
    """``voidrun_sandbox_network_{rx,tx}_bytes`` per wired sandbox, read at scrape time from
    the links' kernel counters (a sysfs read each: memory-backed, never blocks)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, NetworkUsage]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[CounterMetricFamily]:
        rx = CounterMetricFamily(
            "voidrun_sandbox_network_rx_bytes",
            "Bytes received by the sandbox since it last started",
            labels=["sandbox"],
        )
        tx = CounterMetricFamily(
            "voidrun_sandbox_network_tx_bytes",
            "Bytes sent by the sandbox since it last started",
            labels=["sandbox"],
        )
        for sandbox_id, usage in self._snapshot().items():
            rx.add_metric([sandbox_id], usage.rx_bytes)
            tx.add_metric([sandbox_id], usage.tx_bytes)
        return [rx, tx]
