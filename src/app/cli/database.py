"""``app database ...``: advanced-alchemy's migration commands (``upgrade``, ``downgrade``,
``make-migrations``, ``show-current-revision``, ...), over flowgate's SQL configuration.

advanced-alchemy's Litestar group (``advanced_alchemy.extensions.litestar.cli.database_group``)
finds the configuration through the Litestar app's plugin, so it needs the whole app built
first. Its commands only need the configuration, so they are added here
(``add_migration_commands``) to a group that hands them the configuration directly: the same
commands and options, without building the app.
"""

from __future__ import annotations

import logging

import click
from advanced_alchemy.cli import add_migration_commands

from app.cli.common import load_settings_or_fail


@click.group(name="database")
@click.pass_context
def database_group(ctx: click.Context) -> None:
    """Migrate the database (advanced-alchemy, alembic)."""
    from app.infra.sql.config import make_plain_sqlalchemy_config

    settings = load_settings_or_fail()
    # alembic says which migrations it ran through logging; the Litestar app used to configure
    # it, and this group builds no app. The format is the one of flowgate's own log lines.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)-9s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
    ctx.obj = {"configs": [make_plain_sqlalchemy_config(settings.database_url)]}


add_migration_commands(database_group)
