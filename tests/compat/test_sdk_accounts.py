"""SDK 0.4.0 generated clients: version, users, orgs and API keys, images."""

from __future__ import annotations

import pytest
from voidrun import VoidRun
from voidrun.api_client.api.images_api import ImagesApi
from voidrun.api_client.api.organizations_api import OrganizationsApi
from voidrun.api_client.api.system_api import SystemApi
from voidrun.api_client.api.users_api import UsersApi
from voidrun.api_client.exceptions import NotFoundException, UnauthorizedException
from voidrun.api_client.models.activate_api_key_request import ActivateAPIKeyRequest
from voidrun.api_client.models.generate_api_key_request import GenerateAPIKeyRequest

from tests.support.server import ServerProcess


def test_version_and_me() -> None:
    client = VoidRun()._api_client
    assert SystemApi(client).get_version().version
    me = UsersApi(client).get_current_user()
    assert me.email == "admin@localhost" and [o.name for o in me.orgs] == ["default"]
    users = OrganizationsApi(client).get_org_users()
    assert "admin@localhost" in [u.email for u in users.data]


def test_api_key_lifecycle(server: ServerProcess) -> None:
    orgs = OrganizationsApi(VoidRun()._api_client)
    generated = orgs.generate_api_key(GenerateAPIKeyRequest(keyName="sdk-key"))
    assert generated.plain_key.startswith("vr_") and generated.key_name == "sdk-key"
    listed = {k.id: k for k in orgs.list_api_keys()}
    assert listed[generated.key_id].last_used_at is None

    own = UsersApi(VoidRun(api_key=generated.plain_key)._api_client)
    assert own.get_current_user().email == "admin@localhost"
    orgs.activate_api_key(generated.key_id, ActivateAPIKeyRequest(isActive=False))
    with pytest.raises(UnauthorizedException):
        own.get_current_user()
    orgs.activate_api_key(generated.key_id, ActivateAPIKeyRequest(isActive=True))
    assert own.get_current_user().email == "admin@localhost"
    orgs.touch_api_key(generated.key_id)
    assert {k.id: k for k in orgs.list_api_keys()}[generated.key_id].last_used_at is not None
    orgs.revoke_api_key(generated.key_id)
    with pytest.raises(UnauthorizedException):
        own.get_current_user()
    with pytest.raises(NotFoundException):
        orgs.revoke_api_key(generated.key_id)


@pytest.mark.sandbox
def test_images() -> None:
    images = ImagesApi(VoidRun()._api_client)
    listed = images.list_images()
    code = next(i for i in listed if i.name == "code")
    assert code.tag == "1.0.0" and code.system is True and isinstance(code.size_gb, int)
    assert images.get_image(code.id).id == code.id
    assert images.get_image_by_name("code").id == code.id
    with pytest.raises(NotFoundException):
        images.get_image_by_name("missing")
