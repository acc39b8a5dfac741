"""Session guard: a test run that leaves host state of its own behind fails.

At the end of the session (every fixture torn down) it looks for mounts, loop devices,
processes, links, nftables tables and cgroups of this run's servers and drivers
(``hostleaks.leftovers``: only this run's directories and subnets, so a concurrent run on
the same host is never blamed). If it finds any, the run fails listing them, and they are
purged so the next run starts clean. ``tests/unit/test_leak_guard.py`` tests it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator

import pytest

from tests.support import hostleaks


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(LeakGuard(), "voidrun-leak-guard")


class LeakGuard:
    def __init__(self) -> None:
        self.found: list[str] = []
        self.failed: list[str] = []

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if os.geteuid() != 0 or not hostleaks.prefixes():
            return  # without root no test can mount or wire anything
        self.found = [str(item) for item in hostleaks.leftovers()]
        if self.found:
            self.failed = hostleaks.clean_up()
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if not self.failed:
            hostleaks.remove_cgroup_parents()
        if hostleaks.run_state_parent.cache_info().currsize and not self.failed:
            shutil.rmtree(hostleaks.run_state_parent(), ignore_errors=True)

    @pytest.hookimpl(wrapper=True)
    def pytest_terminal_summary(
        self, terminalreporter: pytest.TerminalReporter
    ) -> Generator[None, None, None]:
        yield
        if not self.found:
            return
        write = terminalreporter.write_line
        terminalreporter.write_sep("=", "host state left behind by this run", red=True)
        for item in self.found:
            write(f"left: {item}", red=True)
        write("a fixture that starts a server or driver must purge it after stopping it")
        write("(tests/support/hostleaks.py: ServerProcess.stop_and_purge, purge_state_dir)")
        for item in self.failed:
            write(f"could not remove: {item}", red=True)
