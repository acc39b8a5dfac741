"""How a sandbox driver starts the agent as the sandbox's first process.

The driver bind-mounts ``AGENT_PACKAGE_DIR`` read-only at ``<mount_dir>/voidrun_agent`` and runs
``agent_argv(...)``. ``-I -S`` keep the sandbox's own Python configuration (PYTHON* variables,
site-packages, the working directory) out of the agent; the bootstrap then only has to put the
mount directory on ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

AGENT_PACKAGE_DIR = Path(__file__).resolve().parent / "agent"
PACKAGE_NAME = "voidrun_agent"
DEFAULT_MOUNT_DIR = "/opt/voidrun"


def bootstrap_code(mount_dir: str = DEFAULT_MOUNT_DIR) -> str:
    return (
        f"import sys; sys.path.insert(0, {mount_dir!r}); "
        f"from {PACKAGE_NAME}.__main__ import main; sys.exit(main())"
    )


def agent_argv(
    socket_path: str,
    mount_dir: str = DEFAULT_MOUNT_DIR,
    *,
    env_file: str | None = None,
    python: str | Sequence[str] = "python3",
) -> list[str]:
    """The agent's command line as seen inside the sandbox (paths are sandbox paths).

    ``python`` is the interpreter's argv: in sandboxes, the bundled runtime started through its
    own loader (``voidrun_server.agent_runtime``), never a ``python3`` found through PATH."""
    interpreter = [python] if isinstance(python, str) else list(python)
    argv = [*interpreter, "-I", "-S", "-c", bootstrap_code(mount_dir), "--socket", socket_path]
    if env_file is not None:
        argv += ["--env-file", env_file]
    return argv


def install_agent(root: Path) -> Path:
    """Copy this package under ``root`` and return the copy's directory (to bind-mount).

    Sandboxes run as an unprivileged uid that must be able to reach the directory it mounts,
    and the server's own installation may live in a private tree (a checkout under /root, a
    0700 temp dir). The copy is named by a hash of the sources, made world-readable, compiled,
    and put in place with one rename, so running sandboxes never see it change.
    """
    import compileall
    import hashlib
    import os
    import shutil
    import tempfile

    sources = sorted(AGENT_PACKAGE_DIR.rglob("*.py"))
    digest = hashlib.sha256()
    for path in sources:
        digest.update(str(path.relative_to(AGENT_PACKAGE_DIR)).encode() + b"\0")
        digest.update(path.read_bytes())
    target = root / digest.hexdigest()[:16]
    if target.is_dir():
        return target
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
    try:
        for path in sources:
            dest = staging / path.relative_to(AGENT_PACKAGE_DIR)
            dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            os.chmod(dest, 0o644)
        compileall.compile_dir(str(staging), quiet=1, workers=1)
        for dirpath, _dirnames, filenames in os.walk(staging):
            os.chmod(dirpath, 0o755)
            for name in filenames:
                os.chmod(os.path.join(dirpath, name), 0o644)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():  # not just "someone else installed it first"
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
