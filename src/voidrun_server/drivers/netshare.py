"""The server's one sandbox network, shared by every driver that wires sandboxes.

Two drivers in one process must not each claim the subnet: each would add its own gateway
bridge and route (the second one is refused as an overlap), run its own resolvers on the same
gateway address and rebuild its own nftables table without the other's sandboxes. So the
server makes one :class:`~voidrun_server.drivers.namespace.networking.Networking` and hands
it to each driver it builds (``api/runtimes.py`` passes one :class:`NetworkShare` as a build
asset; the first driver to ask makes it).

Its names (table ``voidrun_<tag>``, bridge ``vrgw<tag>``, resolver files) come from the
namespace driver's state directory, as they did before there was a second driver, so an
upgraded server finds its table and bridge and ``voidrun-server purge`` still does. Its
address book and table cover the sandboxes of every driver's state directory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voidrun_server.config import Settings
from voidrun_server.drivers.base import DriverUnavailableError
from voidrun_server.drivers.registry import state_dirs

if TYPE_CHECKING:
    from voidrun_server.drivers.namespace.networking import Networking

__all__ = ["NetworkShare"]


class NetworkShare:
    """Makes the shared network on first :meth:`get` (None when networking is off)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._made = False
        self._net: Networking | None = None
        self._error: DriverUnavailableError | None = None

    def get(self) -> Networking | None:
        """The network, or None with ``VOIDRUN_SANDBOX_NETWORK=false``. A network that cannot
        run here raises the same DriverUnavailableError for every driver that asks."""
        if self._error is not None:
            raise self._error
        if not self._made:
            from voidrun_server.drivers.namespace.networking import Networking
            from voidrun_server.drivers.namespace.setup import network_config

            config = network_config(self._settings)
            if config is not None:
                names = self._settings.sandboxes_dir.resolve()
                names.mkdir(parents=True, exist_ok=True)
                try:
                    self._net = Networking(names, config, state_dirs(self._settings))
                except DriverUnavailableError as exc:
                    self._error = exc
                    raise
            self._made = True
        return self._net
