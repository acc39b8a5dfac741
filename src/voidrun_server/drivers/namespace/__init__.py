"""The ``namespace`` sandbox driver: bubblewrap + cgroups + seccomp + a size-limited disk.

Module map (one concept each)::

    driver.py    NamespaceDriver: the async API; deadlines, locking, readiness, cleanup rules
    host.py      SandboxHost: the blocking steps (create/start/stop/destroy/...) in threads
    launch.py    spawn bwrap and place the sandbox before it runs (info/userns-block fds)
    bwrap.py     find bwrap, build its argv (what isolation the sandbox gets)
    userns.py    root inside = unprivileged uid range outside (id maps, privilege drop)
    uidrange.py  one host uid range per sandbox: allocation, /etc/subuid, markers on disk
    idmount.py   the shared image, idmapped into each sandbox's range, read-only
    cgroups/     memory/cpu/pids limits and the freezer: v1.py, v2.py, picked at runtime
    seccomp.py   the syscall deny list, compiled once to BPF
    disk.py      per-sandbox ext4 image: template, sparse copy, loop device, mount
    state.py     run directory layout and the state.json record
    procs.py     (pid, start time) process identity that survives restarts
    ready.py     safe connect to the agent socket, readiness polling
    ports.py     connections into the sandbox's network namespace (the preview proxy)
"""

from voidrun_server.drivers.namespace.driver import NamespaceDriver, check_host
from voidrun_server.drivers.namespace.ready import connect_agent_socket

__all__ = ["NamespaceDriver", "check_host", "connect_agent_socket"]
