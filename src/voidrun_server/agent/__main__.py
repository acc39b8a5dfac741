"""Entry point: ``python3 -m voidrun_agent (--socket PATH | --serial DEVICE [--control DEVICE])
[--env-file FILE]``.

``--control``: a second virtio-serial port served like the first (same ops, same state), so
the host can reach the agent while a client holds the main port (the microvm driver renames
a warm-pool VM through it)."""

from __future__ import annotations

import sys

from .context import BASE_ENV
from .jsonc import loads
from .server import serve
from .tasks import run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Tuple


def load_env_file(path: str) -> Dict[str, str]:
    """A JSON object of strings: the sandbox's environment, fixed at creation."""
    with open(path, encoding="utf-8") as fh:
        data = loads(fh.read())
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path} must contain a JSON object of string values")
    return data


USAGE = (
    "usage: voidrun-agent (--socket PATH | --serial DEVICE [--control DEVICE]) [--env-file FILE]"
)


def parse_args(argv: List[str]) -> Tuple[str, Optional[str], bool, Optional[str]]:
    """(socket or device, env file, whether it is a device, control device). Four options do
    not justify argparse, whose import is a visible part of sandbox start."""
    options: Dict[str, Optional[str]] = {
        "--socket": None,
        "--serial": None,
        "--env-file": None,
        "--control": None,
    }
    args = iter(argv)
    for arg in args:
        if arg in ("-h", "--help"):
            print(USAGE)
            raise SystemExit(0)
        if arg not in options:
            raise SystemExit(f"voidrun-agent: unknown argument {arg!r}\n{USAGE}")
        value = next(args, None)
        if not value:
            raise SystemExit(f"voidrun-agent: {arg} needs a value\n{USAGE}")
        options[arg] = value
    socket, serial = options["--socket"], options["--serial"]
    if bool(socket) == bool(serial):
        raise SystemExit(f"voidrun-agent: give one of --socket and --serial\n{USAGE}")
    if options["--control"] and not serial:
        raise SystemExit(f"voidrun-agent: --control goes with --serial\n{USAGE}")
    return socket or serial or "", options["--env-file"], bool(serial), options["--control"]


def main(argv: Optional[List[str]] = None) -> int:
    socket, env_file, serial, control = parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(BASE_ENV)
    if env_file:
        try:
            env.update(load_env_file(env_file))
        except (OSError, ValueError) as exc:
            print(f"voidrun-agent: cannot load --env-file: {exc}", file=sys.stderr)
            return 2
    try:
        return run(serve(socket, env, serial, control))
    except OSError as exc:
        print(f"voidrun-agent: cannot serve {socket}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
