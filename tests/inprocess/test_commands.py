"""Background commands (run, list, attach, stdin, wait, kill) in process: the tests of
``tests/api/test_commands.py``, written once, run here against the host driver."""

# ruff: noqa: F401 - the imported tests and fixtures are collected and used from here

from tests.api.test_commands import (
    sandbox,
    test_bad_input_is_400,
    test_commands_outlive_requests_and_clients,
    test_kill_takes_the_group_and_reads_137,
    test_other_org_and_unknown_sandbox_are_404,
    test_output_ring_is_bounded,
    test_run_list_attach_stdin_wait,
    test_timeout_kills,
    test_unknown_pid_is_404,
    test_unparsable_body_is_400,
)
