"""How a sandbox driver starts the agent as the sandbox's first process.

The driver bind-mounts ``AGENT_PACKAGE_DIR`` read-only at ``<mount_dir>/voidrun_agent`` and runs
``agent_argv(...)``. ``-I -S`` keep the sandbox's own Python configuration (PYTHON* variables,
site-packages, the working directory) out of the agent; the bootstrap then only has to put the
mount directory on ``sys.path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

AGENT_PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_NAME = "voidrun_agent"
DEFAULT_MOUNT_DIR = "/opt/voidrun"


def bootstrap_code(mount_dir: str = DEFAULT_MOUNT_DIR) -> str:
    # ``sys.modules["ssl"] = None`` makes asyncio skip importing ssl (it treats ssl as absent):
    # the agent never speaks TLS, and that import is a tenth of the agent's start-up time.
    return (
        f"import sys; sys.modules['ssl'] = None; sys.path.insert(0, {mount_dir!r}); "
        f"from {PACKAGE_NAME}.__main__ import main; sys.exit(main())"
    )


def agent_argv(
    socket_path: str,
    mount_dir: str = DEFAULT_MOUNT_DIR,
    *,
    env_file: Optional[str] = None,
    python: str = "python3",
) -> List[str]:
    """The agent's command line as seen inside the sandbox (paths are sandbox paths)."""
    argv = [python, "-I", "-S", "-c", bootstrap_code(mount_dir), "--socket", socket_path]
    if env_file is not None:
        argv += ["--env-file", env_file]
    return argv
