"""Adds flowgate's command groups to the Litestar CLI, and its own ``run``."""

from __future__ import annotations

from click import Group
from litestar.plugins import CLIPluginProtocol

from app.cli.demo import chat, demo
from app.cli.flows import flows_group
from app.cli.serve import run_command
from app.cli.token import token_group


class FlowgateCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: Group) -> None:
        cli.add_command(run_command)  # replaces Litestar's run: it cannot set WebSocket options
        cli.add_command(token_group)
        cli.add_command(flows_group)
        cli.add_command(demo)
        cli.add_command(chat)
