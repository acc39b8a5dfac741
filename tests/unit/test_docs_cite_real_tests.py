"""Every test the docs cite exists: ``tests/...py`` files, ``tests/.../`` directories and
``::name`` functions or classes in them (``::a::b`` for a method, ``[param]`` ids ignored).

A bare ``::name`` continues the last file cited earlier on the same line (the tables in
docs/security.md write ``tests/x.py::test_a``, ``::test_b``).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "CONTRIBUTING.md", ROOT / "README.md"]
CITATION = re.compile(r"(?P<path>tests/[\w./-]*)?(?P<names>(?:::[A-Za-z_]\w*(?:\[[^\]`]*\])?)+)?")


def citations() -> list[tuple[str, str, tuple[str, ...]]]:
    """(where, path, names) for every citation; names empty when only the path is cited."""
    found = []
    for doc in DOCS:
        for lineno, line in enumerate(doc.read_text().splitlines(), 1):
            last = ""
            for match in CITATION.finditer(line):
                path, names = match.group("path"), match.group("names")
                if not path and not names:
                    continue
                where = f"{doc.relative_to(ROOT)}:{lineno}"
                if path:
                    last = path.rstrip(".")  # a sentence may end right after the path
                if names and not last:
                    found.append((where, "", (names,)))
                    continue
                parts = tuple(
                    re.sub(r"\[.*\]$", "", part) for part in (names or "").split("::") if part
                )
                found.append((where, last, parts))
    return found


@cache
def defined(path: Path) -> frozenset[str]:
    """``name`` and ``Class::method`` for everything defined at the top of a module."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{item.name}")
    return frozenset(names)


def test_the_docs_cite_tests() -> None:
    assert len(citations()) > 30  # the parser still finds the citations


@pytest.mark.parametrize(
    ("where", "path", "names"),
    [pytest.param(*c, id=f"{c[0]}-{c[1]}::{'::'.join(c[2])}") for c in citations()],
)
def test_cited_test_exists(where: str, path: str, names: tuple[str, ...]) -> None:
    assert path, f"{where}: '::{'::'.join(names)}' cites no file before it on the line"
    target = ROOT / path
    if path.endswith(".py"):
        assert target.is_file(), f"{where}: {path} does not exist"
    else:
        assert target.exists(), f"{where}: {path} does not exist"
        assert not names, f"{where}: {path} is not a Python file"
    if names:
        name = "::".join(names)
        assert name in defined(target), f"{where}: {path} defines no {name}"
