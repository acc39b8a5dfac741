"""Renders the Helm chart in deploy/helm/voidrun without Helm, for the tests and for
``make manifests`` (Helm is neither a Debian nor a PyPI package).

It knows exactly the template language the chart uses and fails on anything else, so a
template that grows a construct it does not know breaks the test instead of rendering wrong:
``{{ .Values.a.b }}``, ``.Release.Name``, ``.Release.Namespace``, ``.Chart.AppVersion``,
pipelines through ``quote``, ``toYaml``, ``nindent N`` and ``indent N``, ``{{ if X }}`` /
``{{ else }}`` / ``{{ end }}`` with Go's truth (empty string, 0, false, empty list or map: false),
and ``{{-`` / ``-}}`` trimming whitespace on that side. A missing value is an error (Helm would
print nothing). Output: what ``helm template`` prints (one ``---`` and ``# Source:`` per file).

    python -m tests.support.helmlite deploy/helm/voidrun VALUES.yaml... > out.yaml
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["render_chart", "render_template", "values_of"]

_ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(ValueError):
    pass


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def values_of(chart: Path, *overrides: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((chart / "values.yaml").read_text()) or {}
    for over in overrides:
        values = _merge(values, over)
    return values


def _lookup(path: str, scope: dict[str, Any]) -> Any:
    if not path.startswith("."):
        raise TemplateError(f"unknown term {path!r}")
    value: Any = scope
    for part in path[1:].split("."):
        if not isinstance(value, dict) or part not in value:
            raise TemplateError(f"no value {path}")
        value = value[part]
    return value


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_yaml(value: Any) -> str:
    return str(yaml.safe_dump(value, default_flow_style=False, sort_keys=True)).rstrip("\n")


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.split("\n"))


def _pipeline(expr: str, scope: dict[str, Any]) -> Any:
    stages = [s.strip() for s in expr.split("|")]
    words = stages[0].split()
    if len(words) == 1:
        value = _lookup(words[0], scope)
    elif len(words) == 2 and words[0] == "toYaml":
        value = _to_yaml(_lookup(words[1], scope))
    else:
        raise TemplateError(f"unsupported expression {stages[0]!r}")
    for stage in stages[1:]:
        name, *args = stage.split()
        if name == "quote" and not args:
            value = json.dumps(_scalar(value))
        elif name == "toYaml" and not args:
            value = _to_yaml(value)
        elif name in ("nindent", "indent") and len(args) == 1 and args[0].isdigit():
            value = ("\n" if name == "nindent" else "") + _indent(_scalar(value), int(args[0]))
        else:
            raise TemplateError(f"unsupported function {stage!r}")
    return value


def render_template(text: str, scope: dict[str, Any]) -> str:
    out: list[str] = []
    stack: list[tuple[bool, bool]] = []  # (this branch on, enclosing on)
    on = True
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(text):
        literal = text[pos : match.start()]
        if trim_next:
            literal = literal.lstrip()
        if match.group(1):
            literal = literal.rstrip()
        if on:
            out.append(literal)
        trim_next = bool(match.group(3))
        pos = match.end()
        action = match.group(2)
        word = action.split()[0] if action.split() else ""
        if word == "if":
            cond = _pipeline(action[2:].strip(), scope)
            stack.append((on, on))
            on = on and bool(cond) and cond != 0
            stack[-1] = (on, stack[-1][1])
        elif word == "else" and action == "else":
            if not stack:
                raise TemplateError("else without if")
            branch, outer = stack[-1]
            on = outer and not branch
            stack[-1] = (True, outer)  # a later else would be an error in Go too
        elif word == "end" and action == "end":
            if not stack:
                raise TemplateError("end without if")
            on = stack.pop()[1]
        elif word.startswith("/*") or word in ("range", "with", "define", "include", "template"):
            raise TemplateError(f"unsupported action {action!r}")
        elif on:
            out.append(_scalar(_pipeline(action, scope)))
    if stack:
        raise TemplateError("if without end")
    tail = text[pos:]
    out.append(tail.lstrip() if trim_next else tail)
    return "".join(out)


def render_chart(
    chart: Path, *overrides: dict[str, Any], name: str = "voidrun", namespace: str = "voidrun"
) -> str:
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    scope = {
        "Values": values_of(chart, *overrides),
        "Release": {"Name": name, "Namespace": namespace},
        "Chart": {
            "Name": meta["name"],
            "Version": meta["version"],
            "AppVersion": meta["appVersion"],
        },
    }
    parts = []
    for path in sorted((chart / "templates").glob("*.yaml")):
        body = render_template(path.read_text(), scope).strip("\n")
        if body.strip():
            parts.append(f"---\n# Source: {meta['name']}/templates/{path.name}\n{body}\n")
    return "".join(parts)


if __name__ == "__main__":
    chart_dir, *value_files = sys.argv[1:]
    extra = [yaml.safe_load(Path(f).read_text()) or {} for f in value_files]
    sys.stdout.write(render_chart(Path(chart_dir), *extra))
