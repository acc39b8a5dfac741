"""A fleet on one machine for the ``fleet`` tier: PostgreSQL, API replicas
(``serve`` with ``VOIDRUN_ROLE=api``) and node daemons (``voidrun-server node``), each with its
own data dir, ports and sandbox subnet."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support import hostleaks
from tests.support.images import IMAGES_DIR
from tests.support.server import (
    BIN,
    ServerProcess,
    free_port,
    free_test_subnet,
    free_uid_base,
    host_slot_env,
    new_cgroup_parent,
    stop_process,
)

HEARTBEAT = 0.5
MISSES = 3
LOST_AFTER = 6.0


def fleet_env(database_url: str, token: str) -> dict[str, str]:
    return {
        "VOIDRUN_DATABASE_URL": database_url,
        "VOIDRUN_NODE_TOKEN": token,
        "VOIDRUN_IMAGES_DIR": str(IMAGES_DIR),
        "VOIDRUN_SANDBOX_DISK_MB": "256",
        "VOIDRUN_NODE_HEARTBEAT_SECONDS": str(HEARTBEAT),
        "VOIDRUN_NODE_SUSPECT_AFTER_MISSES": str(MISSES),
        "VOIDRUN_NODE_LOST_AFTER_SECONDS": str(LOST_AFTER),
        "VOIDRUN_AUTO_SLEEP_CHECK_INTERVAL_SECONDS": "1",
        "VOIDRUN_WARM_POOL_SIZE": "0",  # a module's NODE_ENV turns a node's pool on
    }


@dataclass
class NodeProcess:
    node_id: str
    data_dir: Path
    database_url: str
    token: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    tunnel_port: int = field(default_factory=free_port)
    sandbox_subnet: str = field(default_factory=free_test_subnet)
    uid_base: int = field(default_factory=free_uid_base)
    cgroup_parent: str = field(default_factory=new_cgroup_parent)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state_dir(self) -> Path:
        return self.data_dir / "sandboxes"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOIDRUN_")}
        env.update(fleet_env(self.database_url, self.token))
        env.update(
            VOIDRUN_DATA_DIR=str(self.data_dir),
            VOIDRUN_PORT=str(self.port),
            VOIDRUN_NODE_ID=self.node_id,
            VOIDRUN_NODE_TUNNEL_PORT=str(self.tunnel_port),
            VOIDRUN_SANDBOX_SUBNET=self.sandbox_subnet,
            VOIDRUN_AGENT_RUNTIME_DIR="/var/tmp/voidrun-test-runtime",
            VOIDRUN_ISOLATIONS='["namespace"]',
            VOIDRUN_LOG_LEVEL="info",
        )
        env.update(host_slot_env(self.uid_base, self.cgroup_parent))
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        hostleaks.track(self.state_dir, self.sandbox_subnet, self.cgroup_parent)
        with (self.data_dir / "node.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN), "node"], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited early:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/internal/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"node did not become healthy:\n{self.log()}")

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.url}/internal/v1/health", timeout=5).json()
        return body

    def log(self) -> str:
        return (self.data_dir / "node.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, sig)
        self.process = None

    def stop_and_purge(self) -> None:
        self.stop()
        hostleaks.purge_state_dir(self.state_dir, self.cgroup_parent)


@dataclass
class Fleet:
    database_url: str
    root: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    replicas: list[ServerProcess] = field(default_factory=list)
    nodes: list[NodeProcess] = field(default_factory=list)

    def add_node(self, node_id: str, **extra_env: str) -> NodeProcess:
        node = NodeProcess(
            node_id,
            hostleaks.new_state_dir(f"voidrun-node-{node_id}-"),
            self.database_url,
            self.token,
            extra_env=extra_env,
        )
        self.nodes.append(node)
        return node.start()

    def add_replica(self, **extra_env: str) -> ServerProcess:
        env = {**fleet_env(self.database_url, self.token), "VOIDRUN_ROLE": "api", **extra_env}
        replica = ServerProcess(
            data_dir=hostleaks.new_state_dir("voidrun-replica-"),
            database_url=self.database_url,
            extra_env=env,
        )
        if self.replicas:
            replica.api_key = self.replicas[0].api_key
        self.replicas.append(replica)
        return replica.start()

    def node_rows(self) -> list[dict[str, object]]:
        out = self.replicas[0].cli("nodes", "list", "--json")
        assert out.returncode == 0, out.stderr
        rows: list[dict[str, object]] = __import__("json").loads(out.stdout)
        return rows

    def close(self) -> None:
        for replica in self.replicas:
            replica.stop()
        for node in self.nodes:
            node.stop_and_purge()
        for path in [r.data_dir for r in self.replicas] + [n.data_dir for n in self.nodes]:
            shutil.rmtree(path, ignore_errors=True)


def sql(database_url: str, query: str, *args: object) -> list[Any]:
    """Run one statement on the fleet's database (asyncpg), return its rows."""
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> list[Any]:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())
