"""Entry point: ``python3 -m voidrun_agent --socket PATH [--env-file FILE]``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Dict, List, Optional

from .context import BASE_ENV
from .server import serve


def load_env_file(path: str) -> Dict[str, str]:
    """A JSON object of strings: the sandbox's environment, fixed at creation."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in data.items()
    ):
        raise ValueError(f"{path} must contain a JSON object of string values")
    return data


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="voidrun-agent", description="VoidRun sandbox agent")
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--env-file", help="JSON object merged into the base environment")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="voidrun-agent: %(levelname)s %(message)s",
    )
    env = dict(BASE_ENV)
    if args.env_file:
        try:
            env.update(load_env_file(args.env_file))
        except (OSError, ValueError) as exc:
            print(f"voidrun-agent: cannot load --env-file: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(serve(args.socket, env))
    except OSError as exc:
        print(f"voidrun-agent: cannot listen on {args.socket}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
