"""End-to-end harness: flowgate as a real process on 127.0.0.1, spoken to over a real socket.

Each server gets its own var dir, database and settings; the CLI runs as a separate process
against the same database, exactly as an operator would run it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.infra.auth.token_issuer import issue_token
from app.infra.settings import JWTSettings

STARTUP_SECONDS = 30
SECRET = "e2e-secret-" + "x" * 40

ECHO_GRAPH: dict[str, Any] = {
    "nodes": [
        {"id": "in", "type": "ChatInput", "params": {}},
        {"id": "model", "type": "ScriptedModel", "params": {}},
        {"id": "out", "type": "ChatOutput", "params": {}},
    ],
    "edges": [{"source": "in", "target": "model"}, {"source": "model", "target": "out"}],
}


def scripted_graph(reply: str | None = None, delay: float = 0.0) -> dict[str, Any]:
    params: dict[str, Any] = {"delay": delay}
    if reply is not None:
        params["reply"] = reply
    graph = json.loads(json.dumps(ECHO_GRAPH))
    graph["nodes"][1]["params"] = params
    return graph


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until_healthy(
    process: subprocess.Popen[bytes], http: str, name: str, log: Callable[[], str]
) -> None:
    """Until the server answers ``GET /health`` (at most STARTUP_SECONDS); its log if not."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited at start: {log()[-4000:]}")
        try:
            if httpx.get(f"{http}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{name} did not start: {log()[-4000:]}")


@dataclass
class Server:
    """A running flowgate process and the CLI that manages its data."""

    port: int
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "server.log"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "app", *args],
            env=self.env,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"app {' '.join(args)} failed: {result.stderr}")
        return result

    def token(self, user_id: str, *, role: str | None = None, ttl: int = 3600) -> str:
        """Issued in-process with the server's secret (``app token issue`` has its own test):
        a CLI process per token would double the suite's time."""
        settings = JWTSettings(
            secret=self.env["FLOWGATE_JWT_SECRET"],
            algorithms=("HS256",),
            public_key=None,
            jwks_url=None,
            audience=None,
            issuer=None,
            leeway=0,
        )
        return issue_token(settings, user_id=user_id, role=role, ttl_seconds=ttl)

    def graph_file(self, graph: object) -> str:
        path = self.workdir / f"graph-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(graph))
        return str(path)

    def create_flow(self, owner: str, graph: object = ECHO_GRAPH, online: bool = True) -> str:
        args = [
            "flows",
            "create",
            "--name",
            "f",
            "--owner",
            owner,
            "--graph",
            self.graph_file(graph),
        ]
        return self.cli(*args, *(["--online"] if online else [])).stdout.strip()

    def start(self, *command: str) -> None:
        """Migrate, then serve with ``app run`` (or ``command``, given ``--port`` after it)."""
        self.cli("database", "upgrade", "--no-prompt")
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*(command or (sys.executable, "-m", "app", "run")), "--port", str(self.port)],
            env=self.env,
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        wait_until_healthy(self.process, self.http, "server", self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_server(tmp: Path, **settings: str) -> Server:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWGATE_")}
    env.update(
        {
            "FLOWGATE_VAR_DIR": str(tmp / "var"),
            "FLOWGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/flowgate.db",
            "FLOWGATE_JWT_SECRET": SECRET,
            "FLOWGATE_FLOW_CACHE_TTL": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update({f"FLOWGATE_{k.upper()}": v for k, v in settings.items()})
    return Server(port=free_port(), env=env, workdir=tmp)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = make_server(tmp_path_factory.mktemp("server"))
    running.start()
    yield running
    running.stop()
