"""The authenticated user, as a verified token describes it."""

from __future__ import annotations

import msgspec

ADMIN_ROLE = "admin"


class User(msgspec.Struct, frozen=True):
    """The user a verified token proves: ``id`` (the token's ``sub``), ``name``, ``role``."""

    id: str
    name: str | None = None
    role: str | None = None
    #: Unix time at which the token that proved this identity expires (``exp``).
    expires_at: float | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN_ROLE
