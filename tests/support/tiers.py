"""Test tiers: what a machine needs to run each part of the suite, and one way to skip a tier.

A *tier skip* means "this machine cannot run tier X" (no root, no PostgreSQL, no namespaces, …).
Every such skip goes through :func:`skip_tier` (or :func:`skipif_tier` for a module mark), whose
reason starts with ``[tier X]``. ``tests/conftest.py`` collects them: a tier skip fails the run
unless the tier is named in ``VOIDRUN_TEST_SKIP_TIERS`` (comma-separated, or ``all``), and the
run ends with one summary line per tier. Any other ``pytest.skip`` is test-specific and only
listed.

Tiers are the markers of ``pyproject.toml`` plus ``unit`` (unmarked tests, which need nothing).
"""

from __future__ import annotations

import os
import re
from typing import NoReturn

import pytest

SKIP_TIERS_ENV = "VOIDRUN_TEST_SKIP_TIERS"

# tier -> (what it needs, how to get it). Order is the order of the summary lines.
TIERS: dict[str, tuple[str, str]] = {
    "unit": ("nothing beyond `make install-test`", "run `make install-test`"),
    "inprocess": (
        "nothing beyond `make install-test`: no root, image or PostgreSQL (the app runs in the "
        "test process, each sandbox's agent as a host process of the current user)",
        "run `make install-test`; as a non-root user, a writable TMPDIR",
    ),
    "postgres": (
        "a PostgreSQL server in VOIDRUN_TEST_POSTGRES_URL",
        "install PostgreSQL (`apt-get install postgresql`) and run `make test`, which starts one "
        "with scripts/pg-test.sh, or export VOIDRUN_TEST_POSTGRES_URL=$(scripts/pg-test.sh start)",
    ),
    "root": ("root (chown to other uids, mounts)", "run the tests as root"),
    "sandbox": (
        "root, user/PID namespaces, cgroup v2 and the built `code` image",
        "run as root on a host the namespace driver supports (the skip reason names what "
        "check_host() found missing); `make test` builds the image first",
    ),
    "browser": (
        "root, the sandbox tier's needs, Debian's `chromium`, Playwright for Python and the "
        "dashboard's npm assets (dashboard/node_modules)",
        "run `make install-test` (installs chromium and runs `npm ci` in dashboard/) as root",
    ),
    "fleet": (
        "root, the built `code` image and PostgreSQL in VOIDRUN_TEST_POSTGRES_URL (two API "
        "replicas and three node daemons on this machine)",
        "run `make test` as root (it starts PostgreSQL and builds the image)",
    ),
    "slow": (
        "root, debootstrap and network access to the Debian mirror and npm (the real image build)",
        "run as root with `apt-get install debootstrap` and network access",
    ),
}

_PREFIX = re.compile(r"\[tier ([a-z0-9-]+)\] ?(.*)", re.DOTALL)


def skip_reason(tier: str, reason: str) -> str:
    """The reason string of a tier skip: ``[tier X] reason``."""
    if tier not in TIERS:
        raise ValueError(f"unknown test tier {tier!r}; known: {', '.join(TIERS)}")
    return f"[tier {tier}] {reason}"


def parse_reason(text: str) -> tuple[str, str] | None:
    """(tier, reason) if ``text`` (a skip reason or report line) is a tier skip, else None."""
    found = _PREFIX.search(text)
    return (found.group(1), found.group(2).strip()) if found else None


def skip_tier(tier: str, reason: str) -> NoReturn:
    """Skip the current test because this machine cannot run ``tier`` (``reason`` says why)."""
    __tracebackhide__ = True  # -ra shows the caller's line, not this one
    pytest.skip(skip_reason(tier, reason))


def skipif_tier(condition: bool, tier: str, reason: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark that is a tier skip (for ``pytestmark``)."""
    return pytest.mark.skipif(condition, reason=skip_reason(tier, reason))


def opted_out() -> set[str]:
    """Tiers named in ``VOIDRUN_TEST_SKIP_TIERS`` (``all`` means every tier but ``unit``)."""
    raw = {part.strip() for part in os.environ.get(SKIP_TIERS_ENV, "").split(",") if part.strip()}
    if "all" in raw:
        return set(TIERS) - {"unit"}
    unknown = raw - set(TIERS)
    if unknown:
        raise pytest.UsageError(
            f"{SKIP_TIERS_ENV} names unknown tiers {sorted(unknown)}; known: {', '.join(TIERS)}"
        )
    return raw


def skip_if_opted_out(tier: str) -> None:
    """Skip now if the tier is opted out (call before paying for a server or an image build)."""
    __tracebackhide__ = True
    if tier in opted_out():
        skip_tier(tier, f"opted out by {SKIP_TIERS_ENV}")
