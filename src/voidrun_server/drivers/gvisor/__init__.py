"""The ``gvisor`` sandbox driver: each sandbox runs on gVisor's user-space kernel (``runsc``).

Module map::

    driver.py   GvisorDriver: the async API; deadlines, locking, readiness, cleanup rules
    host.py     GvisorHost: the blocking steps (create/start/stop/destroy/...) in threads
    runsc.py    find runsc, run it under a deadline, probe and pick the platform
    bundle.py   the OCI config.json (agent as first process, mounts, namespaces)
    layout.py   run directory and the host mounts of the root (idmapped image + ext4 disk)
    setup.py    settings -> constructor

Shared with the namespace driver: the per-sandbox ext4 disk (``namespace/disk.py``), idmapped
image mounts (``idmount.py``), cgroups (``cgroups/``), the state record (``state.py``) and
the safe agent-socket connect (``ready.py``).
"""

from voidrun_server.drivers.gvisor.driver import GvisorDriver, check_host

__all__ = ["GvisorDriver", "check_host"]
