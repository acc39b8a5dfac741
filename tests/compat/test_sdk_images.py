"""SDK 0.4.0 with an image the user imported (issue 14): the SDK has no call to import one, so
the import goes through ``POST /api/images``; then the unchanged SDK sees the image and creates
sandboxes from it with ``image="<name>"`` (and ``"<name>:<tag>"``), and runs commands, files
and a background command in them. The image is busybox-only: no Python, no bash."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from voidrun import VoidRun
from voidrun.api_client.api.images_api import ImagesApi

from tests.support.oci_layouts import busybox_layout
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def imported(server: ServerProcess) -> str:
    """``sdk-busybox:1``, imported from an OCI layout under the server's import dir."""
    layout = busybox_layout(server.data_dir / "imports" / "sdk-busybox")
    with server.client() as client:
        body = {"name": "sdk-busybox", "version": "1", "path": layout.source}
        response = client.post("/images", json=body)
        assert response.status_code == 202, response.text
        image_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while (image := client.get(f"/images/{image_id}").json())["status"] == "building":
            assert time.monotonic() < deadline, "the import did not finish"
            time.sleep(0.05)
        assert image["status"] == "ready", image
    return str(image_id)


@pytest.fixture(scope="module", autouse=True)
def delete_image_after(server: ServerProcess, imported: str) -> Iterator[None]:
    yield
    with server.client() as client:  # images live in the shared images dir: free it
        client.delete(f"/images/{imported}")


def test_sdk_sees_and_uses_the_imported_image(imported: str) -> None:
    vr = VoidRun()
    images = ImagesApi(vr._api_client)
    found = images.get_image_by_name("sdk-busybox")
    assert (found.id, found.tag, found.system) == (imported, "1", False)
    assert imported in {image.id for image in images.list_images()}
    for reference in ("sdk-busybox", "sdk-busybox:1"):
        with vr.create_sandbox(name="sdk-imported", image=reference) as box:
            assert box.image == "sdk-busybox:1" and box.status == "running"
            result = box.exec('echo "$GREETING"; pwd; command -v python3 || echo no-python')
            assert result.data.stdout == "hello from the image\n/srv/app\nno-python\n"
            assert result.data.exit_code == 0


def test_sdk_files_and_commands_in_the_imported_image() -> None:
    vr = VoidRun()
    with vr.create_sandbox(name="sdk-imported-fs", image="sdk-busybox") as box:
        box.fs.upload_file("/srv/app/note.txt", b"from the sdk")
        assert box.exec("cat /srv/app/note.txt").data.stdout == "from the sdk"
        assert box.fs.download_file("/srv/app/README") == b"busybox image\n"
        pid = box.commands.run("echo bg; sleep 300").data.pid
        assert pid in {p.pid for p in box.commands.list().data}
        assert box.commands.kill(pid).data.success is True
        assert box.commands.wait(pid).data.exit_code == 137
