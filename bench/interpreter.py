"""The code interpreter's cost: one cell through the preview path, beside the path's own floor.

Usage: .venv/bin/python bench/interpreter.py [--requests 200]   (root)

One sandbox runs the interpreter (``voidrun_server.interpreter``, installed and started the way
``services/interpreter.py`` does) on port 49999. Through the same path-form preview URL and
one keep-alive client, interleaved request by request so both see the same machine load:

* **floor**: ``GET /health`` (the proxy, the interpreter's HTTP server, no kernel);
* **python**: ``POST /execute`` of ``1 + 1`` on the default python context (a real kernel);
* **bash**: ``POST /execute`` of ``true`` on the default bash context.

Plus the cold start once: from the background command's start to the first answer of
``/health``, then the first python cell (the prewarmed kernel) — what a sandbox's first
``run_code`` waits for, beyond writing the files.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time

import httpx

from _harness import row, server
from voidrun_server import interpreter

PORT = interpreter.PORT
INSTALL = "/var/lib/voidrun/interpreter/bench"


def execute(client: httpx.Client, base: str, code: str, language: str) -> None:
    response = client.post(f"{base}/execute", json={"code": code, "language": language})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200 and lines[-1]["type"] == "end_of_execution", response.text
    assert not [line for line in lines if line["type"] == "error"], lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with server() as srv, srv.client() as client:
        made = client.post(
            "/sandboxes",
            json={"name": "bench", "autoSleep": False, "ports": [{"port": PORT}]},
        )
        sid = made.json()["data"]["id"]
        base = f"/sandboxes/{sid}/ports/{PORT}"
        for name, data in interpreter.program_files().items():
            path = f"{INSTALL}/{interpreter.PACKAGE}/{name}"
            client.post(f"/sandboxes/{sid}/files/upload", params={"path": path}, content=data)
        command = f"exec python3 -I -c {shlex.quote(interpreter.bootstrap_code(INSTALL))}"
        started = time.perf_counter()
        client.post(f"/sandboxes/{sid}/commands/run", json={"command": command})
        while client.get(f"{base}/health").status_code != 200:
            time.sleep(0.01)
        listening = time.perf_counter()
        execute(client, base, "1 + 1", "python")
        first_cell = time.perf_counter()
        execute(client, base, "true", "bash")
        print(
            f"cold start: port answering {1000 * (listening - started):.0f} ms, "
            f"first python cell +{1000 * (first_cell - listening):.0f} ms"
        )
        samples: dict[str, list[float]] = {"floor": [], "python": [], "bash": []}
        for _ in range(args.requests):
            for label in samples:
                begin = time.perf_counter()
                if label == "floor":
                    assert client.get(f"{base}/health").status_code == 200
                else:
                    execute(client, base, "1 + 1" if label == "python" else "true", label)
                samples[label].append(1000 * (time.perf_counter() - begin))
        print(
            f"{'ms, ' + str(args.requests) + ' each, interleaved':<52} {'p50':>8} "
            f"{'p95':>8} {'p99':>8}"
        )
        print(row("floor: GET /health through the preview path", samples["floor"]))
        print(row("python: 1 + 1 (jupyter kernel)", samples["python"]))
        print(row("bash: true (persistent bash)", samples["bash"]))
        client.delete(f"/sandboxes/{sid}")


if __name__ == "__main__":
    main()
