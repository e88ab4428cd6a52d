"""The ``app`` root group: lazy commands, one-line errors with exit status 1, close reports."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK
from websockets.frames import Close

from app.cli.demo import _closed
from app.cli.main import ALIASES, COMMANDS, Lazy, LazyGroup, cli


def test_every_listed_command_loads_and_its_help_line_is_its_own() -> None:
    group = LazyGroup(name="probe", lazy=COMMANDS)
    ctx = click.Context(group, info_name="app")
    for name in COMMANDS:
        command = group.get_command(ctx, name)
        assert isinstance(command, click.Command), name
    assert group.get_command(ctx, "db") is group.get_command(ctx, "database")
    assert set(ALIASES.values()) <= set(COMMANDS)


def test_help_lists_every_command_without_loading_one() -> None:
    group = LazyGroup(name="probe", lazy=COMMANDS)
    result = CliRunner().invoke(group, ["--help"])
    assert result.exit_code == 0
    for name, lazy in COMMANDS.items():
        assert name in result.output and lazy.help[:30] in result.output
    assert group.commands == {}  # nothing was imported to list them


def test_a_target_that_is_not_a_command_is_refused() -> None:
    with pytest.raises(TypeError, match="not a click command"):
        Lazy("app.cli.main:LITESTAR_APP", "nothing").load()


@pytest.mark.parametrize(
    "args", [["token", "issue", "--user-id", "u", "--ttl", "0"], ["nope"], ["flows", "nope"]]
)
def test_usage_errors_exit_1_on_one_line(args: list[str]) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ")
    assert "--help" in lines[0]


def test_a_refused_socket_is_its_code_and_reason() -> None:
    refused = ConnectionClosedError(Close(1008, "Unauthorized"), None)
    assert _closed(refused) == "closed by the server: 1008 Unauthorized"
    restarted = ConnectionClosedOK(Close(1012, "service restart"), Close(1012, ""), True)
    assert _closed(restarted) == "closed by the server: 1012 service restart"
    assert _closed(ConnectionClosedError(Close(1011, ""), None)) == "closed by the server: 1011"


def test_a_dropped_socket_says_so() -> None:
    assert _closed(ConnectionClosedError(None, None)).startswith("connection lost")
