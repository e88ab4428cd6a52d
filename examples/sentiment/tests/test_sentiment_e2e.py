"""End to end: flowgate as a real process with the extension installed, over a real socket.

The server is started the way an operator starts it (``app database upgrade``, ``app flows
create``, ``app token issue``, ``app run``), on an embedded SQLite database of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
SHOUT_GRAPH = {
    "nodes": [
        {"id": "in", "type": "ChatInput", "params": {}},
        {"id": "shout", "type": "Shout", "params": {"exclaim": True}},
        {"id": "out", "type": "ChatOutput", "params": {}},
    ],
    "edges": [{"source": "in", "target": "shout"}, {"source": "shout", "target": "out"}],
}


@dataclass
class Flowgate:
    url: str
    flow_id: str
    token: str


def _app(env: dict[str, str], cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"app {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def flowgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flowgate]:
    home = tmp_path_factory.mktemp("flowgate")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWGATE_", "SENTIMENT_"))}
    env |= {
        "FLOWGATE_VAR_DIR": str(home / "var"),
        "FLOWGATE_DATABASE_URL": f"sqlite+aiosqlite:///{home}/flowgate.db",
        "FLOWGATE_JWT_SECRET": "sentiment-e2e-" + "s" * 40,
        "SENTIMENT_POSITIVE": "splendid",  # the extension's own setting
    }
    (home / "graph.json").write_text(json.dumps(SHOUT_GRAPH))
    _app(env, home, "database", "upgrade", "--no-prompt")
    create = ("flows", "create", "--name", "shout", "--owner", "alice", "--graph", "graph.json")
    flow_id = _app(env, home, *create, "--online")
    token = _app(env, home, "token", "issue", "--user-id", "alice")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "app", "run", "--port", str(port)],
            env=env,
            cwd=home,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_until_healthy(server, port, home / "server.log")
        yield Flowgate(f"ws://127.0.0.1:{port}/api/v1/chat/{flow_id}", flow_id, token)
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def _wait_until_healthy(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, f"flowgate exited: {log.read_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(f"flowgate did not start: {log.read_text()}")


async def _frames(ws: ClientConnection, until: str, limit: int = 100) -> list[dict[str, Any]]:
    """The frames up to and including the first whose ``type`` is ``until``."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(limit):
            frames.append(json.loads(await ws.recv()))
            if frames[-1].get("type") == until:
                return frames
    raise AssertionError(f"no {until!r} frame in {frames}")


async def test_the_sentiment_feature_answers_over_a_socket(flowgate: Flowgate) -> None:
    url = f"{flowgate.url}/sentiment?t={flowgate.token}&chat_id=mood"
    async with connect(url, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps({"action": "sentiment", "text": "a splendid day"}))
        async with asyncio.timeout(TIMEOUT):
            assert json.loads(await ws.recv()) == {"label": "positive", "score": 1.0}
        # explain: the server's default model (scripted) echoes the text back word by word.
        await ws.send(json.dumps({"action": "explain", "text": "I hate rain"}))
        frames = await _frames(ws, "done")
    assert "".join(f["text"] for f in frames[:-1]) == "I hate rain"
    assert frames[-1] == {"type": "done", "label": "negative", "score": -1.0}


async def test_a_flow_with_a_shout_node_streams_upper_case(flowgate: Flowgate) -> None:
    url = f"{flowgate.url}?t={flowgate.token}&chat_id=loud"
    async with connect(url, open_timeout=TIMEOUT) as ws:
        await ws.send(json.dumps({"inputs": {"input": "hello there"}}))
        frames = await _frames(ws, "close")
    assert [f["type"] for f in frames] == ["begin", "start", "stream", "stream", "end", "close"]
    assert frames[-2]["message"] == "HELLO THERE!" and frames[-2]["status"] == "complete"
