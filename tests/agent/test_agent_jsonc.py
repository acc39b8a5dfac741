"""``agent.jsonc`` gives exactly what ``json`` gives: both ends of the protocol must accept and
produce the same headers whichever module parses them."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from voidrun_server.agent import jsonc

TRICKY_TEXTS = [
    '{"a":1}',
    ' \t\n{"a": [1, 2.5, true, false, null, "\\u00e9\\ud800"]}\r\n',
    '{"a":1} x',
    '{"a":1}\n\n  {',
    "",
    "   ",
    "\ufeff{}",
    "[1,2",
    "[1,]",
    '{"a" 1}',
    '{"a":"\\x"}',
    '"\t"',
    '"abc',
    "NaN",
    "[Infinity,-Infinity,1e400,-0.0]",
    "01",
    "-",
    "nul",
    '{"a":1,"a":2}',
    "{nope",
    '{"t": "\\ud83d\\ude00"}',
    "[" * 5000 + "]" * 5000,
    "[" * 100_000,
]


def outcome(loads: Any, text: str) -> tuple[str, str]:
    """("ok", the value's repr) or (the kind of error, its message)."""
    try:
        return "ok", repr(loads(text))
    except RecursionError:
        return "recursion", ""
    except ValueError as exc:  # json.JSONDecodeError for json, a ValueError for jsonc
        return "ValueError", str(exc)


@pytest.mark.parametrize("text", TRICKY_TEXTS, ids=range(len(TRICKY_TEXTS)))
def test_loads_matches_json(text: str) -> None:
    assert outcome(jsonc.loads, text) == outcome(json.loads, text)


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "none"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, -1, 2**53, -(2**63), 10**30, rng.randint(-1000, 1000)])
    if kind == "float":
        return rng.choice([0.1, -0.0, 1e300, float("inf"), float("-inf"), rng.random()])
    if kind == "str":
        alphabet = 'ab"\\/\n\t\x00\x1f\x7fé€\U0001f600\udcff\u2028'
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "none":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [random_value(rng, 4) for _ in range(rng.randint(0, 4))]
    return {k if isinstance(k, (str, int, float, bool)) or k is None else "k": random_value(
        rng, depth + 1
    ) for k in keys}  # fmt: skip


def test_dumps_and_loads_match_json_on_random_documents() -> None:
    rng = random.Random(20240611)
    for _ in range(3000):
        value = random_value(rng)
        text = json.dumps(value, separators=(",", ":"))
        assert jsonc.dumps(value) == text
        assert repr(jsonc.loads(text)) == repr(json.loads(text))
        assert repr(jsonc.loads(json.dumps(value, indent=2))) == repr(json.loads(text))


def test_dumps_refuses_what_json_refuses() -> None:
    circular: list[Any] = []
    circular.append(circular)
    for bad in [{"a": object()}, {(1, 2): 3}, {"a": b"x"}, circular]:
        with pytest.raises((TypeError, ValueError)) as mine:
            jsonc.dumps(bad)
        with pytest.raises((TypeError, ValueError)) as theirs:
            json.dumps(bad, separators=(",", ":"))
        assert (type(mine.value), str(mine.value)) == (type(theirs.value), str(theirs.value))
    assert jsonc.dumps({"ok": 1}) == '{"ok":1}'  # a failed call leaves no state behind
    assert jsonc.dumps("é") == json.dumps("é")
