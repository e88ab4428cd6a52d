"""``python -m app`` is the ``app`` command."""

from app.cli import run_cli

run_cli()
