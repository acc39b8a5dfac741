"""The dashboard's main flows in a real browser against real sandboxes (issue 18)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.pages import TIMEOUT_MS, open_page, shot, sign_in, terminal_lines
from tests.support.sandboxes import create_sandbox
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def box(server: ServerProcess) -> dict[str, Any]:
    """A running sandbox of the bootstrap org, made through the API."""
    with server.client() as client:
        return create_sandbox(client, name="web-box", labels={"team": "ui"})


@pytest.fixture(scope="module")
def page(browser: Any, server: ServerProcess) -> Iterator[Any]:
    """One signed-in page for the module's tests (each opens its own sandbox page)."""
    page = sign_in(browser, server)
    yield page
    page.context.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def open_sandbox(page: Any, box: dict[str, Any], tab: str | None = None) -> None:
    page.goto("/#/sandboxes")
    page.get_by_role("link", name=str(box["name"])).click()
    expect(page.locator("#sandbox-status")).to_have_text("running", timeout=TIMEOUT_MS)
    if tab:
        page.get_by_role("tab", name=tab).click()


def test_sign_in_with_a_key_sets_an_http_only_cookie(
    browser: Any, server: ServerProcess, shots: Path
) -> None:
    page = open_page(browser, server)
    shot(page, shots, "sign-in")
    page.get_by_label("API key").fill("vr_not_a_key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid or inactive API key")
    # keyboard only: the input has focus after the error; typing and Enter signs in
    page.keyboard.type(server.api_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Sandboxes")).to_be_visible()
    cookies = page.context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("voidrun_session", True, "Strict")
    ]
    assert server.api_key not in page.evaluate("JSON.stringify(localStorage)")
    assert server.api_key not in page.evaluate("JSON.stringify(sessionStorage)")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.context.request.get("/api/sandboxes").status == 401  # the session is over
    page.context.close()


def test_create_a_sandbox_and_see_it_listed(page: Any, server: ServerProcess, shots: Path) -> None:
    name = f"made-in-ui-{secrets.token_hex(3)}"
    page.goto("/#/sandboxes")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("Labels").last.fill("made=ui")
    page.get_by_role("button", name="Create sandbox").click()
    link = page.locator("table.sandboxes").get_by_role("link", name=name)
    expect(link).to_be_visible(timeout=TIMEOUT_MS)
    shot(page, shots, "sandboxes")
    with server.client() as client:
        rows = client.get("/sandboxes", params={"labels": "made=ui"}).json()["data"]
    assert [row["name"] for row in rows] == [name]
    link.click()
    for tab in ("Terminal", "Files", "Processes"):
        expect(page.get_by_role("tab", name=tab, exact=True)).to_be_visible()
    expect(page.locator("#sandbox-status")).to_have_text("running", timeout=TIMEOUT_MS)
    shot(page, shots, "sandbox-overview")


def test_terminal_runs_echo_hello(page: Any, box: dict[str, Any], shots: Path) -> None:
    open_sandbox(page, box, "Terminal")
    expect(page.get_by_text("Connected (session")).to_be_visible(timeout=TIMEOUT_MS)
    page.locator(".term-box").click()
    page.keyboard.type("echo hel''lo\n")  # the typed line is not "hello"; its output is
    page.wait_for_function(
        """() => [...document.querySelectorAll('.xterm-rows > div')]
                 .some(row => row.textContent.replace(/\\u00a0/g, ' ').trim() === 'hello')""",
        timeout=TIMEOUT_MS,
    )
    assert "hello" in terminal_lines(page)
    shot(page, shots, "terminal")
    session = page.get_by_text("Connected (session").inner_text()
    page.reload()  # the persistent session survives: reattached, its scrollback replayed
    expect(page.get_by_text(session)).to_be_visible(timeout=TIMEOUT_MS)
    page.wait_for_function(
        """() => [...document.querySelectorAll('.xterm-rows > div')]
                 .some(row => row.textContent.replace(/\u00a0/g, ' ').trim() === 'hello')""",
        timeout=TIMEOUT_MS,
    )


def test_files_upload_list_download_and_edit(
    page: Any, server: ServerProcess, box: dict[str, Any], shots: Path, tmp_path: Path
) -> None:
    payload = secrets.token_bytes(200_000)
    local = tmp_path / "blob.bin"
    local.write_bytes(payload)
    open_sandbox(page, box, "Files")
    expect(page.get_by_role("textbox", name="Folder")).to_have_value("/root")
    page.locator("#files-upload").set_input_files(str(local))
    row = page.locator("tr[data-name='blob.bin']")
    expect(row).to_be_visible()
    with page.expect_download() as download:
        row.get_by_role("link", name="Download blob.bin").click()
    saved = tmp_path / "downloaded.bin"
    download.value.save_as(saved)
    assert saved.read_bytes() == payload

    note = tmp_path / "note.txt"
    note.write_text("first line\n")
    page.locator("#files-upload").set_input_files(str(note))
    page.get_by_role("button", name="Edit note.txt").click()
    page.locator("#editor").fill("edited in the browser\n")
    shot(page, shots, "files")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("#editor")).to_have_count(0)
    with server.client() as client:
        response = client.get(
            f"/sandboxes/{box['id']}/files/download", params={"path": "/root/note.txt"}
        )
    assert response.content == b"edited in the browser\n"


def test_files_folder_rename_and_delete(
    page: Any, server: ServerProcess, box: dict[str, Any], tmp_path: Path
) -> None:
    answers = iter(["made-here", "renamed.txt"])
    page.on("dialog", lambda dialog: dialog.accept(next(answers)))  # the name prompts
    open_sandbox(page, box, "Files")
    page.get_by_role("button", name="New folder").click()
    expect(page.locator("tr[data-name='made-here']")).to_be_visible()
    source = tmp_path / "to-rename.txt"
    source.write_text("x")
    page.locator("#files-upload").set_input_files(str(source))
    page.get_by_role("button", name="Rename to-rename.txt").click()
    expect(page.locator("tr[data-name='renamed.txt']")).to_be_visible()
    expect(page.locator("tr[data-name='to-rename.txt']")).to_have_count(0)
    page.get_by_role("button", name="Delete made-here").click()
    page.locator("dialog").get_by_role("button", name="Delete").click()
    expect(page.locator("tr[data-name='made-here']")).to_have_count(0)
    with server.client() as client:
        listed = client.get(f"/sandboxes/{box['id']}/files", params={"path": "/root"}).json()
    names = {f["name"] for f in listed["data"]["files"]}
    assert "renamed.txt" in names and "made-here" not in names and "to-rename.txt" not in names


def test_pause_and_resume_update_the_status_without_reload(
    page: Any, server: ServerProcess, box: dict[str, Any], shots: Path
) -> None:
    open_sandbox(page, box)
    page.evaluate("window.__notReloaded = true")
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#sandbox-status")).to_have_text("paused", timeout=TIMEOUT_MS)
    with server.client() as client:
        assert client.get(f"/sandboxes/{box['id']}").json()["data"]["status"] == "paused"
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#sandbox-status")).to_have_text("running", timeout=TIMEOUT_MS)
    assert page.evaluate("window.__notReloaded") is True
    page.get_by_role("tab", name="Events").click()
    events = page.locator("ol.events strong")
    expect(events).to_have_text(["resume", "pause", "create"])
    shot(page, shots, "events")


def test_status_changed_elsewhere_shows_up_in_the_list(
    page: Any, server: ServerProcess, shots: Path
) -> None:
    with server.client() as client:
        other = create_sandbox(client, name="list-live")
        page.goto("/#/sandboxes")
        row = page.locator(f"tr[data-id='{other['id']}'] [data-status]")
        expect(row).to_have_text("running", timeout=TIMEOUT_MS)
        page.evaluate("window.__notReloaded = true")
        assert client.post(f"/sandboxes/{other['id']}/pause").status_code == 200
        expect(row).to_have_text("paused", timeout=TIMEOUT_MS)
        assert page.evaluate("window.__notReloaded") is True
        client.delete(f"/sandboxes/{other['id']}")


def test_processes_run_show_output_and_kill(page: Any, box: dict[str, Any], shots: Path) -> None:
    open_sandbox(page, box, "Processes")
    page.get_by_role("textbox", name="Command").fill("echo from-the-process; sleep 600")
    page.get_by_role("button", name="Run in background").click()
    expect(page.get_by_label("Process output")).to_contain_text("from-the-process")
    kill = page.get_by_role("button", name="Kill").first
    shot(page, shots, "processes")
    kill.click()
    page.get_by_role("dialog").get_by_role("button", name="Kill").click()
    expect(page.get_by_role("cell", name="running")).to_have_count(0, timeout=TIMEOUT_MS)


def test_usage_charts_show_samples(page: Any, box: dict[str, Any], shots: Path) -> None:
    open_sandbox(page, box, "Usage")
    expect(page.get_by_text("Memory", exact=False).first).to_be_visible()
    expect(page.locator("p.muted", has_text="processes")).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator(".uplot")).to_have_count(4)
    page.wait_for_timeout(4500)  # a few samples for the screenshot, not a check
    shot(page, shots, "usage")


def test_a_revoked_key_ends_its_session(
    browser: Any, page: Any, server: ServerProcess, shots: Path
) -> None:
    page.goto("/#/keys")
    page.get_by_label("New key name").fill("to-revoke")
    page.get_by_role("button", name="Create key").click()
    plain = page.locator("code.secret").inner_text()  # shown once, with a copy button
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    expect(page.get_by_role("cell", name="to-revoke", exact=True)).to_be_visible()
    other = sign_in(browser, server, plain)
    assert other.context.request.get("/api/sandboxes").status == 200
    page.reload()
    expect(page.locator("code.secret")).to_have_count(0)  # not shown again
    expect(page.get_by_role("cell", name="to-revoke", exact=True)).to_be_visible()
    shot(page, shots, "keys")  # without a plain key in a committed picture
    page.get_by_role("button", name="Revoke to-revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("cell", name="to-revoke", exact=True)).to_have_count(0)
    response = other.context.request.get("/api/sandboxes")
    assert response.status == 401
    assert "sign in again" in response.json()["error"]
    other.reload()
    expect(other.get_by_label("API key")).to_be_visible()
    other.context.close()


def test_a_second_org_never_sees_the_first_orgs_sandboxes(
    browser: Any, server: ServerProcess, box: dict[str, Any]
) -> None:
    key = server.new_tenant(f"org-{secrets.token_hex(3)}")
    other = sign_in(browser, server, key)
    expect(other.get_by_text("No sandboxes yet.")).to_be_visible()
    assert str(box["name"]) not in other.locator("main").inner_text()
    other.goto(f"/#/sandboxes/{box['id']}")
    expect(other.get_by_role("alert")).to_contain_text("Sandbox not found")
    assert other.context.request.get(f"/api/sandboxes/{box['id']}").status == 404
    other.context.close()


def test_a_state_changing_request_without_the_csrf_token_is_refused(
    page: Any, server: ServerProcess, box: dict[str, Any]
) -> None:
    page.goto("/#/sandboxes")
    script = """async ([url, token]) => {
        const headers = {"Content-Type": "application/json"};
        if (token) headers["X-CSRF-Token"] = token;
        const r = await fetch(url, {method: "POST", headers, body: "{}"});
        return [r.status, await r.json()];
    }"""
    url = f"/api/sandboxes/{box['id']}/pause"
    status, body = page.evaluate(script, [url, None])
    assert status == 403 and "X-CSRF-Token" in body["error"]
    status, _ = page.evaluate(script, [url, "not-the-token"])
    assert status == 403
    token = page.context.request.get("/api/auth/session").json()["csrfToken"]
    status, body = page.evaluate(script, ["/api/sandboxes", token])
    assert status == 400, body  # past the CSRF check: the body lacks a name
    with server.client() as client:
        assert client.get(f"/sandboxes/{box['id']}").json()["data"]["status"] == "running"


def test_users_images_and_narrow_screen(
    browser: Any, page: Any, server: ServerProcess, shots: Path
) -> None:
    page.goto("/#/users")
    expect(page.get_by_role("cell", name="admin@localhost")).to_be_visible()
    shot(page, shots, "users")
    page.goto("/#/images")
    expect(page.get_by_role("cell", name="code")).to_be_visible()
    shot(page, shots, "images")
    narrow = sign_in(browser, server, width=390, height=800)
    expect(narrow.locator("table.sandboxes")).to_be_visible()
    overflow = narrow.evaluate("document.documentElement.scrollWidth > window.innerWidth")
    assert overflow is False
    shot(narrow, shots, "narrow")
    narrow.context.close()
