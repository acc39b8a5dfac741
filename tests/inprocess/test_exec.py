"""exec and exec-stream in process: the tests of ``tests/api/test_exec.py`` and
``tests/api/test_contract_streams.py``, written once, run here against the host driver.

Left to the sandbox tier: ``test_timeout_kills_the_whole_tree``,
``test_stream_client_disconnect_kills_the_command`` and
``test_exec_stream_headers_and_timeout_exit`` check with ``pgrep`` that no ``sleep`` is left,
which on the host sees every process of the machine; ``test_concurrent_execs`` and
``test_follow_limit_ends_attach_with_an_error_event`` start servers of their own.
"""

# ruff: noqa: F401 - the imported tests and fixtures are collected and used from here

from tests.api.test_contract_streams import (
    test_attach_headers_and_exit,
    test_attach_sends_error_when_the_sandbox_stops,
    test_exec_stream_without_timeout_ends_with_a_plain_exit,
    test_session_exec_stream_headers,
)
from tests.api.test_exec import (
    sandbox,
    test_arguments_too_large_for_the_agent_are_413,
    test_bad_input,
    test_exec_wakes_paused_and_stopped_sandboxes,
    test_exit_codes,
    test_large_and_binary_output,
    test_stdout_stderr_env_cwd,
    test_stream_validation_is_json,
    test_streaming_delivers_output_before_the_command_ends,
    test_the_data_plane_follows_status_changes_at_once,
    test_unknown_and_foreign_sandboxes,
)
