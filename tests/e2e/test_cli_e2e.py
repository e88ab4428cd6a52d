"""The ``app`` command as an operator runs it: ids on stdout, clear errors with exit 1."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from tests.e2e.conftest import Server, scripted_graph

pytestmark = pytest.mark.e2e


def test_errors_are_one_clear_line_and_exit_1(server: Server) -> None:
    cases = [
        ("flows", "publish", "no-such-flow"),
        ("flows", "show", "no-such-flow"),
        ("flows", "delete", "no-such-flow"),
        ("flows", "build", "no-such-flow"),
        ("flows", "create", "--name", "x", "--owner", "o", "--graph", "/nonexistent.json"),
        ("flows", "validate", server.graph_file({"nodes": [{"id": "a", "type": "Nope"}]})),
    ]
    for args in cases:
        result = server.cli(*args, check=False)
        assert result.returncode == 1, args
        assert result.stdout == "", args
        assert "Traceback" not in result.stderr and result.stderr.strip(), args
    not_json = server.workdir / "broken.json"
    not_json.write_text("{nope")
    result = server.cli(
        "flows", "create", "--name", "x", "--owner", "o", "--graph", str(not_json), check=False
    )
    assert result.returncode == 1 and "not valid JSON" in result.stderr


def test_flow_lifecycle(server: Server) -> None:
    flow = server.create_flow("op", scripted_graph("v1"), online=False)
    assert len(flow) == 32 and flow.isalnum()
    listed = server.cli("flows", "list").stdout
    assert f"{flow}\toffline\top\tf" in listed
    server.cli("flows", "publish", flow)
    assert json.loads(server.cli("flows", "show", flow).stdout)["status"] == 2
    version = server.cli(
        "flows",
        "version",
        "add",
        flow,
        "--graph",
        server.graph_file(scripted_graph("v2")),
        "--name",
        "second",
        "--current",
    ).stdout.strip()
    assert version.isdigit()
    shown = json.loads(server.cli("flows", "show", flow).stdout)
    assert shown["current_version_id"] == int(version)
    assert shown["graph"]["nodes"][1]["params"]["reply"] == "v2"
    assert server.cli("flows", "build", flow, "--version", version).stdout.strip() == "success"
    server.cli("flows", "unpublish", flow)
    assert f"{flow}\toffline" in server.cli("flows", "list").stdout
    server.cli("flows", "delete", flow)
    assert flow not in server.cli("flows", "list").stdout


def test_invalid_graphs_are_refused_with_their_problems(server: Server) -> None:
    bad = {
        "nodes": [
            {"id": "in", "type": "ChatInput", "params": {}},
            {"id": "m", "type": "ScriptedModel", "params": {"delay": -1}},
            {"id": "x", "type": "Teleporter", "params": {}},
        ],
        "edges": [{"source": "in", "target": "m"}, {"source": "m", "target": "ghost"}],
    }
    path = server.graph_file(bad)
    for args in (
        ("flows", "validate", path),
        ("flows", "create", "--name", "bad", "--owner", "o", "--graph", path),
    ):
        result = server.cli(*args, check=False)
        assert result.returncode == 1
        for node in ("'m'", "'x'", "ghost", "ChatOutput"):
            assert node in result.stderr, (node, result.stderr)
    flow = server.create_flow("o", online=False)
    build = server.cli("flows", "build", flow, "--graph", path, check=False)
    assert (build.returncode, build.stdout.strip()) == (1, "failure")
    assert "Teleporter" in build.stderr
    assert (
        server.cli("flows", "validate", server.graph_file(scripted_graph("ok"))).stdout == "valid\n"
    )


def test_demo_prints_a_command_that_streams_an_answer(server: Server) -> None:
    out = server.cli("demo", "--url", server.ws).stdout
    command = next(line for line in out.splitlines() if line.startswith("chat:"))
    args = shlex.split(command.removeprefix("chat:").strip())
    assert args[:3] == ["uv", "run", "app"]
    result = subprocess.run(
        [sys.executable, "-m", "app", *args[3:]],
        env=server.env,
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("You said: Hello flowgate.")
    assert "[complete]" in result.stderr
