"""``app token issue``: print a JWT that this deployment accepts."""

from __future__ import annotations

import click

from app.cli.common import fail, load_settings_or_fail


@click.group(name="token")
def token_group() -> None:
    """Issue tokens."""


@token_group.command(name="issue")
@click.option("--user-id", required=True, help="The user id (the token's sub).")
@click.option("--name", default=None, help="The user's display name.")
@click.option("--role", default=None, help="The user's role; 'admin' may debug any flow.")
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(min=1), help="Seconds.")
def issue(user_id: str, name: str | None, role: str | None, ttl: int) -> None:
    """Print a signed JWT for USER_ID."""
    from app.infra.auth.token_issuer import issue_token

    settings = load_settings_or_fail()
    try:
        token = issue_token(settings.jwt, user_id=user_id, name=name, role=role, ttl_seconds=ttl)
    except ValueError as exc:  # SettingsError too: an algorithm this CLI cannot sign with
        raise fail(str(exc)) from None
    click.echo(token)
