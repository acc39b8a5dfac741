"""The files API in process: the tests of ``tests/api/test_files.py`` that work below the
sandbox's ``workdir``, written once, run here against the host driver.

Left to the sandbox tier: ``test_paths_default_to_root_and_root_itself_is_never_deleted``
(here "/" and "/root" are the host's), the 200 MiB and full-disk transfers (a server process's
memory; no disk limit here), and the watch tests (WebSockets).
"""

# ruff: noqa: F401 - the imported tests and fixtures are collected and used from here

import pytest

from tests.api.test_files import (
    api,
    box,
    test_archive_request_errors,
    test_archive_round_trip,
    test_bad_bodies_are_400,
    test_bad_input_is_400,
    test_chmod_and_stat,
    test_download_errors_are_json_before_streaming,
    test_du_head_tail_and_search,
    test_list_errors,
    test_list_shapes_and_odd_names,
    test_malicious_archives_cannot_escape,
    test_mkdir_create_copy_move_delete,
    test_operation_failures_are_exit_codes_not_http_errors,
    test_other_orgs_and_unknown_sandboxes_get_404,
    test_sdk_request_forms,
    test_upload_forms_and_download_headers,
    test_upload_into_a_directory_or_below_a_file_is_refused,
)


@pytest.fixture(scope="module")
def sandbox(request: pytest.FixtureRequest) -> str:
    """``workdir`` is the home of the ``box`` these tests use."""
    return str(request.getfixturevalue("box"))
