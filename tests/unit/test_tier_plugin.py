"""The tier hooks (tests/support/tier_plugin.py) on a tiny generated suite, run by pytester."""

from __future__ import annotations

import pytest

from tests.support.tiers import SKIP_TIERS_ENV, parse_reason, skip_reason

SUITE = """
import pytest
from tests.support.tiers import skip_tier

def test_unit():
    pass

@pytest.mark.postgres
def test_needs_postgres():
    skip_tier("postgres", "VOIDRUN_TEST_POSTGRES_URL is not set")

@pytest.mark.sandbox
def test_sandbox_runs():
    pass

def test_skips_for_its_own_reason():
    pytest.skip("nothing to compare on this kernel")
"""


@pytest.fixture
def suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv(SKIP_TIERS_ENV, raising=False)
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    postgres: x\n    sandbox: x\n"
    )
    pytester.makepyfile(test_suite=SUITE)
    return pytester


def run(pytester: pytest.Pytester) -> pytest.RunResult:
    return pytester.runpytest("-p", "tests.support.tier_plugin", "-ra")


def test_a_tier_skip_fails_the_run_and_says_how_to_fix_it(suite: pytest.Pytester) -> None:
    result = run(suite)
    result.assert_outcomes(passed=2, skipped=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*tier unit: 1 ran, 1 skipped (1 by the test itself, listed above)",
            "tier postgres: 0 ran, 1 skipped (1 as a tier: VOIDRUN_TEST_POSTGRES_URL is not set)"
            " [[]NOT ALLOWED[]]",
            "tier root: not selected",
            "tier sandbox: 1 ran, 0 skipped",
            "*tiers that could not run (this fails the run)*",
            "tier postgres could not run on this machine: VOIDRUN_TEST_POSTGRES_URL is not set",
            "  it needs a PostgreSQL server*",
            "  to run it: install PostgreSQL*",
            f"  to run without it: {SKIP_TIERS_ENV}=postgres",
        ]
    )
    # The test-specific skip is listed (by -ra) but does not fail the run on its own.
    result.stdout.fnmatch_lines(["SKIPPED*nothing to compare on this kernel"])


def test_the_opt_out_passes_and_names_the_tiers_that_did_not_run(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SKIP_TIERS_ENV, "postgres,sandbox")
    result = run(suite)
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "tier postgres: 0 ran, 1 skipped (1 as a tier: opted out by*)"
            f" [[]allowed by {SKIP_TIERS_ENV}[]]",
            "tier sandbox: 0 ran, 1 skipped*[[]allowed by*",
            f"{SKIP_TIERS_ENV}=postgres,sandbox: these tiers did not run",
        ]
    )
    result.stdout.no_fnmatch_line("*this fails the run*")


def test_only_test_specific_skips_pass(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_suite="import pytest\n\ndef test_x():\n    pytest.skip('own reason')\n")
    result = run(suite)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["tier unit: 0 ran, 1 skipped (1 by the test itself*"])


def test_an_unknown_tier_in_the_opt_out_is_a_usage_error(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SKIP_TIERS_ENV, "postgress")
    result = run(suite)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown tiers*postgress*"])


def test_reason_round_trip() -> None:
    assert parse_reason("Skipped: " + skip_reason("sandbox", "needs root")) == (
        "sandbox",
        "needs root",
    )
    assert parse_reason("Skipped: nothing to do") is None
    with pytest.raises(ValueError):
        skip_reason("gpu", "no GPU")
