"""SDK 0.4.0: sandbox CRUD, lifecycle, exec, streaming, the code interpreter, public URLs."""

from __future__ import annotations

import asyncio
import re

import pytest
from voidrun import AsyncVoidRun, VoidRun
from voidrun.api_client.exceptions import NotFoundException

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(900)]


def test_create_with_defaults_then_get_and_remove() -> None:
    vr = VoidRun()
    box = vr.create_sandbox()
    try:
        assert re.fullmatch(r"[0-9a-f]{24}", box.id) and box.name.startswith("sdbx-")
        assert (box.status, box.cpu, box.mem, box.image) == ("running", 1, 1024, "code:1.0.0")
        assert box.auto_sleep is True and box.node_id is None and isinstance(box.disk_mb, int)
        again = vr.get_sandbox(box.id)
        assert again.id == box.id and again.created_at == box.created_at
    finally:
        vr.remove_sandbox(box.id)
    assert vr.get_sandbox(box.id).status == "deleted"


def test_create_with_every_option_and_list() -> None:
    vr = VoidRun()
    box = vr.create_sandbox(
        name="sdk-full",
        cpu=2,
        mem=2048,
        env_vars={"GREETING": "hi"},
        auto_sleep=False,
        region="eu",
        labels={"suite": "compat", "kind": "full"},
        ports=[{"protocol": "http", "port": 8080}],
    )
    other = vr.create_sandbox(name="sdk-other", labels={"suite": "compat"})
    try:
        assert (box.name, other.name) == ("sdk-full", "sdk-other")
        assert (box.cpu, box.mem, box.region, box.auto_sleep) == (2, 2048, "eu", False)
        assert box.env_vars == {"GREETING": "hi"}
        assert box.labels == {"suite": "compat", "kind": "full"}
        assert [(p.protocol, p.port) for p in box.ports] == [("http", 8080)]
        assert box.exec("echo $GREETING").data.stdout == "hi\n"

        listed = vr.list_sandboxes(labels={"suite": "compat"})
        assert [s.id for s in listed.sandboxes] == [other.id, box.id]  # newest first
        assert (listed.meta.total, listed.meta.page) == (2, 1)
        page = vr.list_sandboxes(page=2, limit=1, labels={"suite": "compat"})
        assert [s.id for s in page.sandboxes] == [box.id] and page.meta.total_pages == 2
        only = vr.list_sandboxes(labels={"kind": "full"})
        assert [s.id for s in only.sandboxes] == [box.id]
        facade = vr.sandboxes.list()
        assert facade.status_code == 200
        assert {box.id, other.id} <= {s.id for s in facade.data}
        assert next(s for s in facade.data if s.id == box.id).name == "sdk-full"

        urls = box.get_public_urls()
        assert [u.port for u in urls] == [8080] and urls[0].url
        assert box.get_public_url(8080) is not None and box.get_public_url(9) is None
    finally:
        vr.remove_sandbox(box.id)
        vr.remove_sandbox(other.id)


def test_update_and_lifecycle() -> None:
    vr = VoidRun()
    with vr.create_sandbox(name="sdk-life") as box:
        box.update(auto_sleep=False)
        assert box.auto_sleep is False and vr.get_sandbox(box.id).auto_sleep is False
        box.exec("echo kept > /root/f")

        box.sleep()
        assert vr.get_sandbox(box.id).status == "snapshotted"
        box.wake()
        assert vr.get_sandbox(box.id).status == "running"
        box.pause()
        assert vr.get_sandbox(box.id).status == "snapshotted"
        box.resume()
        box.stop()
        box.start()  # start on a snapshotted sandbox brings it back
        assert vr.get_sandbox(box.id).status == "running"
        assert box.exec("cat /root/f").data.stdout == "kept\n"
        sandbox_id = box.id
    assert vr.get_sandbox(sandbox_id).status == "deleted"  # the context manager removed it


def test_exec_and_streams() -> None:
    vr = VoidRun()
    with vr.create_sandbox(name="sdk-exec") as box:
        result = box.exec("echo out; echo err >&2; exit 3", cwd="/tmp", env={"A": "1"})
        assert (result.data.stdout, result.data.stderr, result.data.exit_code) == (
            "out\n",
            "err\n",
            3,
        )
        assert box.exec(command="pwd", cwd="/tmp").data.stdout == "/tmp\n"

        out: list[str] = []
        err: list[str] = []
        exits: list[dict[str, int]] = []
        box.exec_stream(
            "for i in 1 2 3; do echo line $i; done; echo oops >&2; exit 4",
            on_stdout=out.append,
            on_stderr=err.append,
            on_exit=exits.append,
        )
        assert out == ["line 1", "line 2", "line 3"] and err == ["oops"]
        assert exits == [{"exitCode": 4}]


CODE = {
    "python": ("print(6*7)", "42"),
    "javascript": ("console.log(6*7)", "42"),
    "typescript": ("const n: number = 6*7; console.log(n)", "42"),
    "bash": ("echo $((6*7))", "42"),
}


@pytest.mark.parametrize("language", list(CODE))
def test_run_code(language: str) -> None:
    vr = VoidRun()
    with vr.create_sandbox(name=f"sdk-{language}") as box:
        code, expected = CODE[language]
        result = box.run_code(code, language=language)
        assert result.success is True and result.exit_code == 0
        assert result.stdout.strip() == expected and str(result.results) == expected


def test_run_code_long_python_and_errors() -> None:
    vr = VoidRun()
    with vr.create_sandbox(name="sdk-long") as box:
        program = (
            "def f(x):\n    return x * 2\n\n\n"
            + "\n".join(f"v{i} = f({i})" for i in range(200))
            + '\nimport json\nprint(json.dumps({"total": sum(f(i) for i in range(200))}))\n'
        )
        result = box.run_code(program)
        assert result.success and result.results == {"total": 39800}
        failed = box.run_code("raise SystemExit('boom')")
        assert failed.success is False and "boom" in (failed.error or "")


def test_async_client() -> None:
    async def scenario() -> None:
        async with AsyncVoidRun() as vr:
            box = await vr.create_sandbox(name="sdk-async")
            listed = await vr.list_sandboxes()
            assert box.id in [s.id for s in listed.sandboxes]
            assert (await box.run_code_async("print('async')")).stdout == "async\n"
            await vr.remove_sandbox(box.id)
            assert (await vr.get_sandbox(box.id)).status == "deleted"

    asyncio.run(scenario())


def test_unknown_sandbox_raises_not_found() -> None:
    with pytest.raises(NotFoundException):
        VoidRun().get_sandbox("0" * 24)
