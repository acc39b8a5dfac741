"""Sandbox CRUD, paging, validation, tenancy and status dialects in process: the tests of
``tests/api/test_sandboxes.py`` and ``tests/api/test_contract_sandboxes.py`` that need no
image and no second server, written once, run here against the host driver."""

# ruff: noqa: F401 - the imported tests and fixtures are collected and used from here

from tests.api.test_contract_sandboxes import (
    tenant,
    test_auto_dialect_sniffs_only_the_sdk_user_agent,
    test_create_bounds_are_exact_400s,
    test_pagination_defaults_and_clamps,
    test_port_protocols_other_than_http_and_tcp_are_400,
    test_tenant_fields_in_the_body_never_override_the_key,
    test_upper_bounds_are_accepted,
)
from tests.api.test_sandboxes import (
    test_create_validation,
    test_list_paging_and_labels,
    test_other_orgs_see_404,
    test_patch_is_strict,
)
