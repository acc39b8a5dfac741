"""The MCP server at /mcp and /api/mcp: the official ``mcp`` SDK's streamable HTTP client
against a real server process and real sandboxes (docs/mcp.md)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, TextContent

from tests.api.test_accounts import second_org
from tests.support.http import assert_error
from tests.support.sandboxes import shared_sandbox_server  # noqa: F401 - the "server" fixture
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]

TOOLS = {
    "create_sandbox",
    "list_sandboxes",
    "get_sandbox",
    "kill_sandbox",
    "execute_command",
    "run_code",
    "read_file",
    "write_file",
    "list_files",
    "create_directory",
    "delete_file",
    "get_preview_url",
    "list_processes",
    "kill_process",
}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw", "version": "0"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@asynccontextmanager
async def mcp(
    server: ServerProcess,
    headers: dict[str, str] | None = None,
    path: str = "/mcp",
    mode: str = "legacy",
) -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP, with our key unless ``headers`` say otherwise."""
    http = httpx2.AsyncClient(
        headers=headers if headers is not None else {"X-API-Key": server.api_key},
        timeout=httpx2.Timeout(120, read=360),
    )
    async with http:
        transport = streamable_http_client(f"{server.url}{path}", http_client=http)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            yield client


def text(result: CallToolResult) -> str:
    assert result.content and isinstance(result.content[0], TextContent), result
    return result.content[0].text


async def call(client: Client, tool: str, **arguments: Any) -> str:
    """The tool's text; fails on a tool error."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text(result)
    return text(result)


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The API's error text in the tool error that the call must end in (after the SDK's
    ``Error executing tool <name>: ``)."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, text(result)
    prefix = f"Error executing tool {tool}: "
    assert text(result).startswith(prefix), text(result)
    return text(result)[len(prefix) :]


def refused_by_http(error: BaseException) -> bool:
    """Whether the SDK's client error (alone or in exception groups) is its report of an HTTP
    error status (it does not say which)."""
    if isinstance(error, BaseExceptionGroup):
        return all(refused_by_http(inner) for inner in error.exceptions)
    return (
        isinstance(error, MCPError) and error.error.message == "Server returned an error response"
    )


@pytest.fixture(autouse=True)
def no_crash_logged(server: ServerProcess) -> Iterator[None]:
    """Whatever a test sends, the server logs no traceback (a tool that crashed, a 500)."""
    start = server.log_path.stat().st_size
    yield
    with server.log_path.open("rb") as log:
        log.seek(start)
        written = log.read().decode(errors="replace")
    for sign in ("Traceback", "unhandled error", "crashed", "raised an unexpected exception"):
        assert sign not in written, written


@pytest.fixture(scope="module")
def sandbox(server: ServerProcess) -> str:
    async def make() -> str:
        async with mcp(server) as client:
            return (await call(client, "create_sandbox", name="mcp-box")).split("\n", 1)[0]

    return anyio.run(make)


async def test_tools_and_their_input_schemas(server: ServerProcess) -> None:
    for mode in ("legacy", "auto"):  # initialize handshake, and the 2026 discover probe
        async with mcp(server, mode=mode) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert "total" in json.loads(await call(client, "list_sandboxes"))
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description, tool.name
            schema = tool.input_schema
            assert schema["type"] == "object"
            if tool.name not in ("create_sandbox", "list_sandboxes"):
                assert "sandbox_id" in schema["required"], tool.name
        execute = tools["execute_command"].input_schema
        assert set(execute["properties"]) >= {"sandbox_id", "command", "timeout", "background"}
        assert set(execute["required"]) == {"sandbox_id", "command"}
        assert execute["properties"]["background"]["type"] == "boolean"
        assert set(tools["write_file"].input_schema["required"]) == {
            "sandbox_id",
            "path",
            "content",
        }
        code = tools["run_code"].input_schema["properties"]
        assert set(code) >= {"sandbox_id", "code", "language"}
        assert set(tools["get_preview_url"].input_schema["required"]) == {"sandbox_id", "port"}


async def test_create_execute_write_read_list_kill(server: ServerProcess) -> None:
    bearer = {"Authorization": f"Bearer {server.api_key}"}
    async with mcp(server, headers=bearer, path="/api/mcp") as client:
        created = await call(client, "create_sandbox", env={"GREETING": "hello"})
        sandbox_id, details = created.split("\n", 1)
        assert len(sandbox_id) == 24 and json.loads(details)["status"] == "running"
        listed = json.loads(await call(client, "list_sandboxes"))
        assert sandbox_id in [box["id"] for box in listed["sandboxes"]]

        ran = json.loads(
            await call(
                client,
                "execute_command",
                sandbox_id=sandbox_id,
                command='echo "$GREETING"; echo oops >&2; exit 3',
            )
        )
        assert ran == {"exitCode": 3, "stdout": "hello\n", "stderr": "oops\n"}

        content = "first line\nsecond: ünïcode\n"
        wrote = await call(
            client, "write_file", sandbox_id=sandbox_id, path="/root/new/dir/a.txt", content=content
        )
        assert wrote == f"Wrote {len(content.encode())} bytes to /root/new/dir/a.txt"
        read = await call(client, "read_file", sandbox_id=sandbox_id, path="/root/new/dir/a.txt")
        assert read == content
        cat = await call(
            client, "execute_command", sandbox_id=sandbox_id, command="cat new/dir/a.txt"
        )
        assert json.loads(cat)["stdout"] == content

        await call(client, "create_directory", sandbox_id=sandbox_id, path="/root/new/empty")
        entries = json.loads(
            await call(client, "list_files", sandbox_id=sandbox_id, path="/root/new")
        )
        assert {(e["name"], e["isDir"]) for e in entries} == {("dir", True), ("empty", True)}
        await call(client, "delete_file", sandbox_id=sandbox_id, path="/root/new/dir")
        entries = json.loads(
            await call(client, "list_files", sandbox_id=sandbox_id, path="/root/new")
        )
        assert [e["name"] for e in entries] == ["empty"]
        missing = await refused(client, "read_file", sandbox_id=sandbox_id, path="/root/nope")
        assert missing.startswith("File not found")

        assert await call(client, "kill_sandbox", sandbox_id=sandbox_id) == (
            f"Sandbox {sandbox_id} deleted"
        )
        listed = json.loads(await call(client, "list_sandboxes"))
        assert sandbox_id not in [box["id"] for box in listed["sandboxes"]]
        gone = await refused(client, "execute_command", sandbox_id=sandbox_id, command="true")
        with server.client() as http:  # the API's own words for it
            api = http.post(f"/sandboxes/{sandbox_id}/exec", json={"command": "true"}).json()
        said = f"{api['error']}: {api['details']}" if "details" in api else api["error"]
        assert gone == said
        assert await refused(client, "get_preview_url", sandbox_id=sandbox_id, port=80) == said


async def test_background_command_and_processes(server: ServerProcess, sandbox: str) -> None:
    async with mcp(server) as client:
        started = json.loads(
            await call(
                client,
                "execute_command",
                sandbox_id=sandbox,
                command="echo started > /root/bg.txt; sleep 600",
                background=True,
            )
        )
        pid = started["pid"]
        assert isinstance(pid, int) and started["running"] is True
        processes = json.loads(await call(client, "list_processes", sandbox_id=sandbox))
        assert {"pid": pid, "running": True} in [
            {"pid": p["pid"], "running": p["running"]} for p in processes
        ]
        assert await call(client, "kill_process", sandbox_id=sandbox, pid=pid) == (
            f"Process {pid} killed"
        )
        deadline = time.monotonic() + 60
        while True:  # killed: reaped and reported at once or in a moment
            processes = json.loads(await call(client, "list_processes", sandbox_id=sandbox))
            states = [p["running"] for p in processes if p["pid"] == pid]
            if states != [True] or time.monotonic() > deadline:
                break
            await anyio.sleep(0.1)
        assert states == [False]
        assert await call(client, "read_file", sandbox_id=sandbox, path="/root/bg.txt") == (
            "started\n"
        )
        unknown = await refused(client, "kill_process", sandbox_id=sandbox, pid=999999)
        assert unknown.startswith("Process not found")


async def test_run_code(server: ServerProcess, sandbox: str) -> None:
    """The sandbox's stateful interpreter (services/interpreter.py): state persists."""
    async with mcp(server) as client:
        program = "import sys\nx = 41\n\nprint(x + 1)\nprint('it''s', file=sys.stderr)\n"
        ran = json.loads(await call(client, "run_code", sandbox_id=sandbox, code=program))
        assert ran == {"stdout": "42\n", "stderr": "its\n"}
        value = json.loads(await call(client, "run_code", sandbox_id=sandbox, code="x + 1"))
        assert value["results"] == [{"text": "42", "isMainResult": True}]
        plot = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()"
        shown = json.loads(await call(client, "run_code", sandbox_id=sandbox, code=plot))
        assert "png" in shown["results"][0]["formats"]
        failed = json.loads(
            await call(client, "run_code", sandbox_id=sandbox, code="raise ValueError('no')")
        )
        assert (failed["error"]["name"], failed["error"]["value"]) == ("ValueError", "no")
        assert "\x1b[" not in failed["error"]["traceback"]
        quoted = 'N=6; echo "it\'s $((N * 7))"'
        shell = json.loads(
            await call(client, "run_code", sandbox_id=sandbox, code=quoted, language="bash")
        )
        assert shell["stdout"] == "it's 42\n"
        again = json.loads(
            await call(client, "run_code", sandbox_id=sandbox, code="echo $N", language="sh")
        )
        assert again["stdout"] == "6\n"
        js = json.loads(
            await call(client, "run_code", sandbox_id=sandbox, code="6 * 7", language="node")
        )
        assert js["results"][0]["text"] == "42"
        slow = await refused(
            client, "run_code", sandbox_id=sandbox, code="import time; time.sleep(60)", timeout=1
        )
        assert slow.startswith("Execution timed out")


def test_preview_url_reaches_a_server_in_the_sandbox(server: ServerProcess, sandbox: str) -> None:
    async def preview() -> str:
        async with mcp(server) as client:
            await call(
                client,
                "write_file",
                sandbox_id=sandbox,
                path="/root/site/index.html",
                content="hi!",
            )
            await call(
                client,
                "execute_command",
                sandbox_id=sandbox,
                command="cd /root/site && exec python3 -m http.server 8000",
                background=True,
            )
            url = await call(client, "get_preview_url", sandbox_id=sandbox, port=8000)
            box = json.loads(await call(client, "get_sandbox", sandbox_id=sandbox))
            assert box["ports"] == [{"protocol": "http", "port": 8000}]  # declared by the tool
            # asked again: the same URL, the port declared once
            assert await call(client, "get_preview_url", sandbox_id=sandbox, port=8000) == url
            return url

    url = anyio.run(preview)
    assert url.startswith(f"{server.api}/sandboxes/{sandbox}/ports/8000/?voidrun_token=vrt_")
    deadline = time.monotonic() + 60
    while True:  # until the server in the sandbox listens
        response = httpx.get(url, timeout=30)  # a person's browser: no API key
        if response.status_code != 502 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200, response.text
    assert response.text == "hi!"
    without_token = httpx.get(url.split("?", 1)[0], timeout=30)
    assert_error(without_token, 401)


def test_wrong_or_missing_key_is_refused_before_mcp(server: ServerProcess, sandbox: str) -> None:
    for path in ("/mcp", "/api/mcp"):
        missing = httpx.post(f"{server.url}{path}", json=INITIALIZE, headers=MCP_HEADERS)
        assert assert_error(missing, 401)["error"] == (
            "authentication required (X-API-Key or Bearer token)"
        )
        for header in ("X-API-Key", "Authorization"):
            value = "vr_" + "x" * 43
            wrong = httpx.post(
                f"{server.url}{path}",
                json=INITIALIZE,
                headers={
                    **MCP_HEADERS,
                    header: f"Bearer {value}" if header != "X-API-Key" else value,
                },
            )
            assert assert_error(wrong, 401)["error"] == "invalid or inactive API key"
    both = {**MCP_HEADERS, "X-API-Key": server.api_key, "Authorization": "Bearer x"}
    assert_error(httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=both), 400)

    async def wrong_key() -> None:
        async with mcp(server, headers={"X-API-Key": "vr_" + "y" * 43}) as client:
            await client.list_tools()

    with pytest.raises(BaseExceptionGroup) as raised:
        anyio.run(wrong_key)
    assert refused_by_http(raised.value)


async def test_revoked_key_is_refused_at_once(server: ServerProcess) -> None:
    with server.client() as admin:
        created = admin.post("/orgs/apikeys", json={"keyName": "mcp-revoked"}).json()
    key, key_id = created["plainKey"], created["keyId"]
    async with mcp(server, headers={"X-API-Key": key}) as client:
        await call(client, "list_sandboxes")
        with server.client() as admin:
            assert admin.delete(f"/orgs/apikeys/{key_id}").status_code == 200
        headers = {**MCP_HEADERS, "X-API-Key": key}
        async with httpx.AsyncClient() as http:
            response = await http.post(f"{server.url}/mcp", json=INITIALIZE, headers=headers)
        assert assert_error(response, 401)["error"] == "invalid or inactive API key"
        with pytest.raises(MCPError) as raised:  # the same client's next call
            await client.call_tool("list_sandboxes", {})
        assert refused_by_http(raised.value)


async def test_another_orgs_sandbox_is_not_found(server: ServerProcess, sandbox: str) -> None:
    key = second_org(server, "mcp-other")
    async with mcp(server, headers={"X-API-Key": key}) as client:
        assert json.loads(await call(client, "list_sandboxes")) == {"total": 0, "sandboxes": []}
        for tool, extra in (
            ("get_sandbox", {}),
            ("execute_command", {"command": "true"}),
            ("run_code", {"code": "print(1)"}),
            ("read_file", {"path": "/root/bg.txt"}),
            ("write_file", {"path": "/root/x", "content": "x"}),
            ("list_files", {}),
            ("get_preview_url", {"port": 8000}),
            ("list_processes", {}),
            ("kill_sandbox", {}),
        ):
            message = await refused(client, tool, sandbox_id=sandbox, **extra)
            assert message == "Sandbox not found", (tool, message)
    with server.client() as http:  # still there, untouched
        assert http.get(f"/sandboxes/{sandbox}").json()["data"]["status"] == "running"


async def test_bad_arguments_are_tool_errors(server: ServerProcess, sandbox: str) -> None:
    async with mcp(server) as client:
        for tool, arguments in (
            ("execute_command", {"sandbox_id": sandbox}),  # command missing
            ("execute_command", {"sandbox_id": sandbox, "command": "true", "timeout": "soon"}),
            ("execute_command", {"sandbox_id": sandbox, "command": ["ls"]}),
            ("run_code", {"sandbox_id": sandbox, "code": "1", "language": "cobol"}),
            ("get_preview_url", {"sandbox_id": sandbox, "port": 70000}),
            ("kill_process", {"sandbox_id": sandbox, "pid": "one"}),
            ("list_sandboxes", {"limit": 0}),
            ("read_file", {}),
        ):
            result = await client.call_tool(tool, arguments)
            assert result.is_error, (tool, arguments, text(result))
        too_long = await refused(
            client, "execute_command", sandbox_id=sandbox, command="true", timeout=1000
        )
        assert too_long == "Invalid timeout: must be between 1 and 300 seconds"
        not_an_id = await refused(client, "get_sandbox", sandbox_id="../../etc")
        assert not_an_id == "Sandbox not found"
        relative = await refused(client, "write_file", sandbox_id=sandbox, path="/", content="")
        assert relative == "Invalid path: path must name a file"
        unknown = await client.call_tool("no_such_tool", {})
        assert unknown.is_error


def test_malformed_requests_are_never_5xx(server: ServerProcess) -> None:
    # raw JSON-RPC that is not well formed: a JSON-RPC error or a 4xx, never a 5xx
    headers = {**MCP_HEADERS, "X-API-Key": server.api_key}
    for body in (b"{not json", b"[]", b'{"jsonrpc": "2.0", "id": 1, "method": 5}'):
        response = httpx.post(f"{server.url}/mcp", content=body, headers=headers)
        assert 400 <= response.status_code < 500 or "error" in response.json(), response.text
        assert response.status_code < 500, response.text
    wrong_type = httpx.post(
        f"{server.url}/mcp", json=INITIALIZE, headers={**headers, "Content-Type": "text/plain"}
    )
    assert 400 <= wrong_type.status_code < 500
    put = httpx.put(f"{server.url}/mcp", json=INITIALIZE, headers=headers)
    assert_error(put, 405)
    # stateless: no stream to open, no session to end
    stream = httpx.get(f"{server.url}/mcp", headers={**headers, "Accept": "text/event-stream"})
    assert_error(stream, 405)
    assert stream.headers["allow"] == "POST"
    assert_error(httpx.delete(f"{server.url}/mcp", headers=headers), 405)


def test_disallowed_host_or_origin_is_refused(server: ServerProcess) -> None:
    headers = {**MCP_HEADERS, "X-API-Key": server.api_key}
    fine = httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=headers)
    assert fine.status_code == 200, fine.text
    localhost = {**headers, "Host": f"localhost:{server.port}"}
    assert httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=localhost).status_code == 200
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1:1"):
        response = httpx.post(
            f"{server.url}/mcp", json=INITIALIZE, headers={**headers, "Host": host}
        )
        body = assert_error(response, 421)
        assert body["error"] == f"Host {host!r} is not one of this server's names"
    # a rebinding page carries no key either: refused before authentication
    keyless = {**MCP_HEADERS, "Host": "evil.example"}
    assert_error(httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=keyless), 421)
    origin = {**headers, "Origin": "http://evil.example"}
    assert_error(httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=origin), 403)
    own = {**headers, "Origin": f"http://127.0.0.1:{server.port}"}
    assert httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers=own).status_code == 200
