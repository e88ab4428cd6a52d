"""The ``app`` command's root: a click group that imports a command only when it is invoked.

Litestar's own CLI group (``litestar.cli.main.litestar_group``) builds the application before
it can list or run any command (its ``LitestarExtensionGroup`` loads the app to call the CLI
plugins), so even ``app --help`` imported Litestar, advanced-alchemy, SQLAlchemy, redis and
alembic: about 1.5 s. This root knows each command's name and one-line help, lists them without
importing anything, and imports a command's module when it runs. The commands themselves are
still the libraries' where they fit: ``app database ...`` is advanced-alchemy's migration
command set (:mod:`app.cli.database`), and Litestar's ``info``, ``routes``, ``schema``,
``sessions`` and ``version`` are Litestar's own commands, given the app only when they ask for it.

Every error exits with status 1, usage errors included (click's default for those is 2), and is
reported on one line of stderr (a multi-line message, such as a graph's problems, aside).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click

#: The app Litestar's commands load (``app info``, ``app routes``, ``app schema ...``).
LITESTAR_APP = "app.api.asgi:create_app"


@dataclass(frozen=True)
class Lazy:
    """Where a command lives (``module:attribute``, then a subcommand of it if ``key`` is set),
    and the line ``app --help`` shows for it."""

    target: str
    help: str
    key: str | None = None

    def load(self) -> click.Command:
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if self.key is not None:
            command = command.commands[self.key]
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.target} is not a click command")
        return command


_LITESTAR = "litestar.cli.main:litestar_group"

COMMANDS: dict[str, Lazy] = {
    "run": Lazy("app.cli.serve:run_command", "Serve flowgate with uvicorn."),
    "database": Lazy(
        "app.cli.database:database_group", "Migrate the database (advanced-alchemy, alembic)."
    ),
    "token": Lazy("app.cli.token:token_group", "Issue tokens."),
    "flows": Lazy("app.cli.flows:flows_group", "Manage flows."),
    "demo": Lazy("app.cli.demo:demo", "Create (once) the demo flow; print a token and a chat URL."),
    "chat": Lazy("app.cli.demo:chat", "Chat over a flowgate WebSocket URL."),
    "info": Lazy(_LITESTAR, "Show information about the Litestar app.", "info"),
    "routes": Lazy(_LITESTAR, "Display the app's routes.", "routes"),
    "schema": Lazy(_LITESTAR, "Manage the app's OpenAPI schema (Litestar).", "schema"),
    "sessions": Lazy(_LITESTAR, "Manage server-side sessions (Litestar).", "sessions"),
    "version": Lazy(_LITESTAR, "Show the installed Litestar version.", "version"),
}
ALIASES = {"db": "database"}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use; ``--help`` imports none of them."""

    def __init__(self, *args: Any, lazy: dict[str, Lazy], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = ALIASES.get(cmd_name, cmd_name)
        if name not in self.commands and name in self.lazy:
            self.add_command(self.lazy[name].load(), name)
        return self.commands.get(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, self.lazy[name].help if name in self.lazy else self.commands[name].help or "")
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(  # type: ignore[override]
        self, args: Sequence[str] | None = None, prog_name: str | None = None, **extra: Any
    ) -> NoReturn:
        extra.pop("standalone_mode", None)
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else prog_name or "app"
            _exit(f"Error: {exc.format_message()} (see '{where} --help')")
        except click.ClickException as exc:
            exc.show()
            sys.exit(1)
        except click.Abort:
            _exit("Aborted.")
        sys.exit(result if isinstance(result, int) else 0)


def _exit(line: str) -> NoReturn:
    click.echo(line, err=True)
    sys.exit(1)


def _litestar_env() -> Any:
    """What Litestar's commands expect as the root context's object: called, it loads the app
    (only the commands that take ``app`` or ``env`` call it)."""
    from litestar.cli._utils import LitestarEnv

    return LitestarEnv.from_env(LITESTAR_APP)


@click.group(
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """flowgate: serve, migrate, manage flows, issue tokens, chat.

    Errors go to stderr, one line, with exit status 1.
    """
    os.environ.setdefault("LITESTAR_APP", LITESTAR_APP)
    os.environ.setdefault("LITESTAR_APP_NAME", "flowgate")
    ctx.obj = _litestar_env
