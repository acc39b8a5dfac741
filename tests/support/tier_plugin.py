"""The pytest hooks behind test tiers (loaded by ``tests/conftest.py``; see ``tiers.py``).

* Tests of a tier named in ``VOIDRUN_TEST_SKIP_TIERS`` are skipped before they start.
* Every report is sorted into tiers (the item's tier markers, else ``unit``; a tier skip also
  counts for the tier it names).
* A tier skip of a tier that was not opted out fails the session, with what the tier needs and
  how to get it.
* The terminal summary ends with one line per tier.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

import pytest

from tests.support.tiers import (
    SKIP_TIERS_ENV,
    TIERS,
    opted_out,
    parse_reason,
    skip_reason,
)


@dataclass
class _Outcome:
    tiers: set[str]
    skipped: bool = False
    tier_skip: tuple[str, str] | None = None  # (tier, reason) when skipped as a tier
    other_reason: str = ""


@dataclass
class _State:
    opted_out: set[str]
    marked: dict[str, set[str]] = field(default_factory=dict)  # node id -> its tier markers
    outcomes: dict[str, _Outcome] = field(default_factory=dict)

    def unexpected(self) -> dict[str, list[str]]:
        """Tier -> reasons, for tier skips of tiers that were not opted out."""
        found: dict[str, list[str]] = {}
        for outcome in self.outcomes.values():
            if outcome.tier_skip and outcome.tier_skip[0] not in self.opted_out:
                tier, reason = outcome.tier_skip
                reasons = found.setdefault(tier, [])
                if reason not in reasons:
                    reasons.append(reason)
        return found


def _skip_text(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(TierPlugin(_State(opted_out=opted_out())), "voidrun-tiers")


class TierPlugin:
    def __init__(self, state: _State) -> None:
        self.state = state

    @pytest.hookimpl(trylast=True)  # after conftests that add tier markers (tests/compat)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marked = {tier for tier in TIERS if item.get_closest_marker(tier) is not None}
            self.state.marked[item.nodeid] = marked
            for tier in TIERS:
                if tier in self.state.opted_out and tier in marked:
                    reason = skip_reason(tier, f"opted out by {SKIP_TIERS_ENV}")
                    item.add_marker(pytest.mark.skip(reason=reason))
                    break

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = self.state.outcomes.get(report.nodeid)
        if outcome is None:
            marked = self.state.marked.get(report.nodeid, set())
            outcome = self.state.outcomes[report.nodeid] = _Outcome(tiers=set(marked))
        if report.skipped and not hasattr(report, "wasxfail"):
            outcome.skipped = True
            text = _skip_text(report)
            parsed = parse_reason(text)
            if parsed and parsed[0] in TIERS:
                outcome.tier_skip = parsed
                outcome.tiers.add(parsed[0])
            else:
                outcome.other_reason = text.removeprefix("Skipped: ")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.state.unexpected() and session.exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        ):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter
    ) -> Generator[None, None, None]:
        # Outside the terminal reporter's own wrapper: after the short test summary (-ra), so
        # the tier lines are the last thing before the final counts.
        yield
        _summary(self.state, terminalreporter)


def _tier_lines(state: _State) -> list[str]:
    lines = []
    for tier in TIERS:
        members = [o for o in state.outcomes.values() if (o.tiers or {"unit"}) & {tier}]
        if not members:
            lines.append(f"tier {tier}: not selected")
            continue
        ran = sum(not o.skipped for o in members)
        tier_skips = [o.tier_skip for o in members if o.tier_skip and o.tier_skip[0] == tier]
        others = sum(o.skipped and o.tier_skip is None for o in members)
        line = f"tier {tier}: {ran} ran, {len(tier_skips) + others} skipped"
        if tier_skips:
            reasons = sorted({reason for _, reason in tier_skips})
            shown = "; ".join(reasons[:2])
            if len(reasons) > 2:
                shown += f"; +{len(reasons) - 2} more"
            verdict = "allowed by " + SKIP_TIERS_ENV if tier in state.opted_out else "NOT ALLOWED"
            line += f" ({len(tier_skips)} as a tier: {shown}) [{verdict}]"
        if others:
            line += f" ({others} by the test itself, listed above)"
        lines.append(line)
    return lines


def _summary(state: _State, terminalreporter: pytest.TerminalReporter) -> None:
    write = terminalreporter.write_line
    terminalreporter.write_sep("=", "test tiers")
    for line in _tier_lines(state):
        write(line)
    if state.opted_out:
        write(f"{SKIP_TIERS_ENV}={','.join(sorted(state.opted_out))}: these tiers did not run")
    unexpected = state.unexpected()
    if not unexpected:
        return
    terminalreporter.write_sep("=", "tiers that could not run (this fails the run)", red=True)
    for tier, reasons in unexpected.items():
        needs, fix = TIERS[tier]
        write(f"tier {tier} could not run on this machine: {'; '.join(reasons[:3])}", red=True)
        write(f"  it needs {needs}")
        write(f"  to run it: {fix}")
        write(f"  to run without it: {SKIP_TIERS_ENV}={','.join(sorted({tier, *state.opted_out}))}")
