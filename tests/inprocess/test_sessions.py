"""Shell sessions (session-exec, session-exec-stream) in process: the tests of
``tests/api/test_pty.py`` that speak HTTP, written once, run here against the host driver.

Left to the sandbox tier: the PTY WebSocket tests (this tier's client speaks HTTP only).
"""

# ruff: noqa: F401 - the imported tests and fixtures are collected and used from here

from tests.api.test_pty import (
    sandbox,
    test_pty_bad_input,
    test_read_is_answered_by_input,
    test_session_errors_are_400,
    test_session_exec_stream_is_ndjson,
    test_session_state_persists_across_calls,
    test_unknown_session_names_the_agent_error,
)
