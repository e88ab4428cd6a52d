"""The ``app`` command: flowgate's own groups (``app run``, ``app token``, ``app flows``,
``app demo``, ``app chat``), advanced-alchemy's ``app database ...`` and Litestar's commands,
each imported only when it runs (see :mod:`app.cli.main`)."""

from __future__ import annotations


def run_cli() -> None:
    from app.cli.main import cli

    cli.main(prog_name="app")
