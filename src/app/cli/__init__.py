"""The ``app`` command: the Litestar CLI (``app run``, ``app database upgrade``) plus flowgate's
own groups (``app token``, ``app flows``, ``app demo``)."""

from __future__ import annotations

import os
import sys


def run_cli() -> None:
    os.environ.setdefault("LITESTAR_APP", "app.api.asgi:create_app")
    os.environ.setdefault("LITESTAR_APP_NAME", "flowgate")
    from litestar.cli.main import litestar_group

    sys.exit(litestar_group())
