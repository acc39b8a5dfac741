"""Imports go one way (CONTRIBUTING.md, "Layout"): ``api`` → ``services`` → ``store``, ``drivers``.

Routes reach the database and the agents only through services; services reach the agent's
protocol only through ``agentclient`` (which re-exports its codes); the lower layers never
import the upper ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import voidrun_server

PACKAGE = Path(voidrun_server.__file__).parent
# The app's wiring may build what routes use: app.py creates the engine and runs migrations,
# deps.py opens the transaction that authenticates a request.
WIRING = {"voidrun_server.api.app", "voidrun_server.api.deps"}
RULES = [
    # (modules under, may not import, except)
    ("voidrun_server.api", ("voidrun_server.store", "sqlalchemy", "voidrun_server.agent."), WIRING),
    ("voidrun_server.services", ("voidrun_server.api", "voidrun_server.agent."), set()),
    ("voidrun_server.store", ("voidrun_server.api", "voidrun_server.services"), set()),
    ("voidrun_server.drivers", ("voidrun_server.api", "voidrun_server.services"), set()),
    # the node daemon: like the app, only its wiring (daemon.py) opens the database
    (
        "voidrun_server.node",
        ("voidrun_server.store", "sqlalchemy", "voidrun_server.agent."),
        {"voidrun_server.node.daemon"},
    ),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, relative imports resolved; names imported from a
    package count as its submodules (``from ..store import db`` is ``…store.db``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def violations(under: str, forbidden: tuple[str, ...], exempt: set[str]) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if not (name == under or name.startswith(under + ".")) or name in exempt:
            continue
        for line, imported in imports(path):
            if any(imported == f.rstrip(".") or imported.startswith(f) for f in forbidden):
                found.append(f"{name}:{line} imports {imported}")
    return found


@pytest.mark.parametrize(("under", "forbidden", "exempt"), RULES, ids=[r[0] for r in RULES])
def test_imports_go_one_way(under: str, forbidden: tuple[str, ...], exempt: set[str]) -> None:
    assert violations(under, forbidden, exempt) == []


def test_relative_imports_are_resolved() -> None:
    routes = PACKAGE / "api" / "routes" / "sandboxes.py"
    assert module_name(routes) == "voidrun_server.api.routes.sandboxes"
    names = [name for _, name in imports(routes)]
    assert "voidrun_server.services.sandboxes.SandboxRow" in names  # from ...services…
    assert "voidrun_server.api.deps.Caller" in names  # from ..deps import Caller
