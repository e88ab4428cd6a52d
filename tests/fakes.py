"""Moved to :mod:`app.testing` (a supported module, importable by extensions' tests); kept so
that imports of ``tests.fakes`` keep working."""

from app.testing.fakes import *  # noqa: F403
