"""``vm.identity``: make a restored VM snapshot this sandbox (the microvm driver's clones).

Clones of one snapshot start with the same kernel state. Before the sandbox is handed out,
the host sends, over its own channel, what must differ: the hostname, the wall clock (the
guest's stopped when the snapshot was taken) and fresh host randomness, which is credited to
the kernel's input pool and forces an immediate CRNG reseed (``RNDADDENTROPY`` then
``RNDRESEEDCRNG``; otherwise every clone would draw the same "random" bytes until its next
scheduled reseed). Also the sandbox's environment: merged into the exec defaults and written
to the env file a restarted agent reads. Runs only when the agent is PID 1 (the guest's init
in a microvm): an agent started on a host as root must never set the host's clock or name.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import time

from .args import bad, env_map, opt_str, req_str
from .protocol import PERMISSION_DENIED, OpError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict

    from .context import AgentContext
    from .stream import Stream

RNDADDENTROPY = 0x40085203  # _IOW('R', 0x03, int[2])
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


def reseed(seed: bytes) -> None:
    fd = os.open("/dev/random", os.O_WRONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, RNDADDENTROPY, struct.pack("ii", len(seed) * 8, len(seed)) + seed)
        fcntl.ioctl(fd, RNDRESEEDCRNG)
    finally:
        os.close(fd)


async def op_vm_identity(ctx: AgentContext, stream: Stream, args: Dict[str, Any]) -> Dict[str, Any]:
    if os.getpid() != 1:
        raise OpError(PERMISSION_DENIED, "vm.identity runs only in an agent that is PID 1 (a VM)")
    hostname = req_str(args, "hostname")
    seed_hex = req_str(args, "seed")
    clock = args.get("time")
    if isinstance(clock, bool) or not isinstance(clock, (int, float)) or clock <= 0:
        raise bad("'time' must be a positive number (seconds since the epoch)")
    try:
        seed = bytes.fromhex(seed_hex)
    except ValueError:
        raise bad("'seed' must be hex") from None
    if len(seed) < 32:
        raise bad("'seed' must hold at least 32 bytes")
    env = env_map(args) if args.get("env") is not None else {}
    env_file = opt_str(args, "envFile")
    try:
        reseed(seed)
        time.clock_settime(time.CLOCK_REALTIME, float(clock))
        socket.sethostname(hostname)
    except PermissionError as exc:
        raise OpError(PERMISSION_DENIED, f"vm.identity needs the guest's root: {exc}") from None
    except OSError as exc:
        raise bad(f"vm.identity failed: {exc}") from None
    ctx.defaults.update(env)
    if env_file:
        tmp = f"{env_file}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(env, separators=(",", ":")))
        os.replace(tmp, env_file)
    return {}
