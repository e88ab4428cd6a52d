"""The ``app`` command as an operator runs it: ids on stdout, clear errors with exit 1."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import uuid

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
    assert listed.splitlines()[0] == "ID\tSTATUS\tOWNER\tNAME"
    assert f"{flow}\toffline\top\tf" in listed
    server.cli("flows", "publish", flow)
    assert json.loads(server.cli("flows", "show", flow).stdout)["status"] == "online"
    as_json = json.loads(server.cli("flows", "list", "--json").stdout)
    assert {"id": flow, "name": "f", "owner_id": "op", "status": "online"}.items() <= next(
        item for item in as_json if item["id"] == flow
    ).items()
    assert all("graph" not in item for item in as_json)
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
    assert shown["status"] == "online"
    assert shown["current_version_id"] == int(version)
    assert shown["graph"]["nodes"][1]["params"]["reply"] == "v2"
    assert server.cli("flows", "build", flow, "--version", version).stdout.strip() == "success"
    server.cli("flows", "unpublish", flow)
    assert f"{flow}\toffline" in server.cli("flows", "list").stdout
    assert json.loads(server.cli("flows", "show", flow).stdout)["status"] == "offline"
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
    # `uv run app chat ...` with uv on PATH, else the script or `python -m app` that ran.
    result = _python(server, "-m", "app", *args[args.index("chat") :])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("You said: Hello flowgate.")
    assert "[complete]" in result.stderr


def test_demo_reuses_its_flow(server: Server) -> None:
    def demo_flow() -> str:
        out = server.cli("demo", "--url", server.ws).stdout
        return next(line for line in out.splitlines() if line.startswith("flow:")).split()[1]

    first = demo_flow()
    server.cli("flows", "unpublish", first)
    assert demo_flow() == first
    listed = server.cli("flows", "list").stdout.splitlines()[1:]
    assert [line.split("\t")[1:] for line in listed if line.startswith(first)] == [
        ["online", "demo", "demo"]
    ]
    assert sum(1 for line in listed if line.endswith("\tdemo\tdemo")) == 1


def _python(
    server: Server, *args: str, env: dict[str, str] | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """This Python with ``args``, in the server's directory and environment (plus ``env``)."""
    return subprocess.run(
        [sys.executable, *args],
        input=stdin,
        env={**server.env, **(env or {})},
        cwd=server.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_chat_reports_a_refused_socket_in_one_line(server: Server) -> None:
    flow = server.create_flow("owner")
    cases = {
        f"{server.ws}/api/v1/chat/{flow}?t=not-a-jwt&chat_id=c-refused": "1008 Unauthorized",
        f"{server.ws}/api/v1/chat/nope?t={server.token('u')}&chat_id=c-gone": "1008 flow deleted",
    }
    for url, reason in cases.items():
        line = _one_line_error(server.cli("chat", url, "-m", "Hello", check=False))
        assert line == f"Error: closed by the server: {reason}"
        assert "not-a-jwt" not in line


def test_chat_sends_each_line_of_stdin_and_prints_each_answer(server: Server) -> None:
    flow = server.create_flow("u-lines", scripted_graph(delay=0.01))
    url = f"{server.ws}/api/v1/chat/{flow}?t={server.token('u-lines')}&chat_id=c-lines"
    result = _python(server, "-m", "app", "chat", url, stdin="first\n\nsecond\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["first", "second"]  # the echo model's answers
    assert result.stderr.count("[complete]") == 2
    refused = _python(server, "-m", "app", "chat", url.replace("t=", "t=x"), stdin="hello\n")
    assert _one_line_error(refused) == "Error: closed by the server: 1008 Unauthorized"


def test_chat_reports_an_unreachable_server_in_one_line(server: Server) -> None:
    port = server.port + 1 if server.port < 65535 else server.port - 1
    line = _one_line_error(server.cli("chat", f"ws://127.0.0.1:{port}/x", "-m", "hi", check=False))
    assert line.startswith("Error: cannot chat:")
    line = _one_line_error(server.cli("chat", "http://example.invalid/x", check=False))
    assert line == "Error: cannot chat: not a ws:// or wss:// URL"


def test_usage_errors_exit_1_in_one_line(server: Server) -> None:
    for args, needle in [
        (("token", "issue", "--user-id", "u", "--ttl", "0"), "--ttl"),
        (("token", "issue", "--user-id", "u", "--ttl", "soon"), "--ttl"),
        (("token", "issue"), "--user-id"),
        (("flows", "nope"), "nope"),
        (("nope",), "nope"),
        (("chat", "ws://127.0.0.1:1/x", "--timeout", "0"), "--timeout"),
    ]:
        result = server.cli(*args, check=False)
        line = _one_line_error(result)
        assert line.startswith("Error: ") and needle in line, line
        assert result.stdout == ""


def test_token_issue_prints_a_token_the_server_accepts(server: Server) -> None:
    token = server.cli("token", "issue", "--user-id", "u-tok", "--ttl", "60").stdout.strip()
    assert token.count(".") == 2
    flow = server.create_flow("u-tok")
    url = f"{server.ws}/api/v1/chat/{flow}?t={token}&chat_id=c-tok"
    result = server.cli("chat", url, "-m", "Hi", check=False)
    assert result.returncode == 0, result.stderr
    assert "[complete]" in result.stderr


@pytest.mark.parametrize(
    ("args", "setting", "value"),
    [
        (("flows", "list"), "MESSAGES_PER_SECOND", "0"),
        (("token", "issue", "--user-id", "u"), "TURN_LEASE", "-1"),
        (("database", "upgrade", "--no-prompt"), "DATABASE_URL", "mysql://root:pw@db/fg"),
        (("run", "--port", "1"), "SEND_BUFFER", "-5"),
        (("demo",), "REDIS_CLUSTER", "maybe"),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    server: Server, args: tuple[str, ...], setting: str, value: str
) -> None:
    result = _python(server, "-m", "app", *args, env={f"FLOWGATE_{setting}": value})
    line = _one_line_error(result)
    assert f"FLOWGATE_{setting}" in line
    assert "pw@" not in line


def test_uvicorn_factory_reports_a_bad_setting_in_one_line(server: Server) -> None:
    factory = ("-m", "uvicorn", "app.api.asgi:create_app", "--factory", "--port", "1")
    result = _python(server, *factory, env={"FLOWGATE_MESSAGES_PER_SECOND": "0"})
    line = _one_line_error(result)
    assert "FLOWGATE_MESSAGES_PER_SECOND" in line


def test_several_workers_without_redis_are_refused(server: Server) -> None:
    result = server.cli("run", "--workers", "2", "--port", "1", check=False)
    line = _one_line_error(result)
    assert "FLOWGATE_REDIS_URL" in line and "--workers 2" in line


_REPORT_MODULES = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.__stderr__.write("
    "'MODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
    "from app.cli import run_cli\n"
    "run_cli()\n"
)


def _modules_loaded_by(server: Server, *args: str) -> set[str]:
    """Every module ``app ARGS`` imported, and each one's top-level package."""
    result = _python(server, "-c", _REPORT_MODULES, *args)
    line = next(line for line in result.stderr.splitlines() if line.startswith("MODULES "))
    modules = set(line.split()[1:])
    return modules | {module.split(".")[0] for module in modules}


def test_commands_that_need_no_app_do_not_import_it(server: Server) -> None:
    heavy = {"litestar", "sqlalchemy", "advanced_alchemy", "alembic", "redis", "asyncpg"}
    for args in (
        ("--help",),
        ("flows", "--help"),
        ("token", "issue", "--user-id", "u"),
        ("chat", f"ws://127.0.0.1:{server.port}/api/v1/chat/x?t=bad", "-m", "hi"),
    ):
        loaded = _modules_loaded_by(server, *args)
        assert "click" in loaded, args  # the probe works
        assert not loaded & heavy, (args, loaded & heavy)
    assert "jwt" not in _modules_loaded_by(server, "--help")


def test_flows_on_sqlite_import_no_unused_driver(server: Server) -> None:
    loaded = _modules_loaded_by(server, "flows", "list")
    assert {"sqlalchemy", "aiosqlite"} <= loaded  # the probe works
    unused = {"redis", "asyncpg", "alembic", "uvicorn", "rich_click"}
    assert not loaded & {*unused, "advanced_alchemy.extensions.litestar", "litestar.cli"}


def test_database_upgrade_migrates_a_new_database_and_says_so(server: Server) -> None:
    url = f"sqlite+aiosqlite:///{server.workdir}/fresh-{uuid.uuid4().hex[:8]}.db"
    env = {"FLOWGATE_DATABASE_URL": url}
    upgraded = _python(server, "-m", "app", "database", "upgrade", "--no-prompt", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade  -> 0001" in upgraded.stderr
    current = _python(server, "-m", "app", "db", "show-current-revision", env=env)
    assert "(head)" in current.stdout, current.stdout
    listed = _python(server, "-m", "app", "flows", "list", env=env)
    assert listed.stdout == "ID\tSTATUS\tOWNER\tNAME\n"
