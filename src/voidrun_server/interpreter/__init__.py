"""The stateful code interpreter that runs *inside* a sandbox (E2B's port-49999 protocol).

The server never imports the modules of this package: ``services/interpreter.py`` reads their
source (``program_files``), writes them into the sandbox through its agent and starts them with
the image's own ``python3`` (which has ``jupyter_client`` and ``ipykernel``; the ``code`` image
does). Inside, they import only the standard library, ``jupyter_client`` and each other
(``tests/unit/test_interpreter_program.py`` checks).

- ``server.py``: the HTTP server on the sandbox's loopback, ``POST /execute`` (NDJSON stream),
  ``/contexts`` CRUD, ``GET /health``.
- ``contexts.py``: the contexts table (a default one per language, serialised executions).
- ``kernels.py``: a Python context on a real Jupyter kernel; ``shell.py``: a bash context on
  one persistent bash process; ``node.py`` (+ ``node_runner.js``): a javascript context on one
  persistent node process.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGE", "PORT", "bootstrap_code", "program_files", "version"]

PORT = 49999
PACKAGE = "voidrun_interpreter"
_DIR = Path(__file__).resolve().parent
_FILES = (
    "__init__.py",
    "server.py",
    "contexts.py",
    "kernels.py",
    "shell.py",
    "node.py",
    "node_runner.js",
    "wire.py",
)


def program_files() -> dict[str, bytes]:
    """The package's files by name, as they are written into a sandbox."""
    return {name: (_DIR / name).read_bytes() for name in _FILES}


def version() -> str:
    """A digest of the program's files: what its health check reports, so the server (with the
    same files) tells a sandbox still running an older program, and where it is installed."""
    import hashlib

    digest = hashlib.sha256()
    for name, data in sorted(program_files().items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()[:16]


def bootstrap_code(install_dir: str) -> str:
    """``python3 -I -c`` code that runs the program installed in ``install_dir``."""
    return (
        f"import sys; sys.path.insert(0, {install_dir!r}); "
        f"from {PACKAGE}.server import main; sys.exit(main())"
    )
