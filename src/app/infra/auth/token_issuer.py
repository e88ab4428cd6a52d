"""Issue JWTs that :class:`~app.infra.auth.jwt_verifier.JWTVerifier` accepts.

For the CLI's ``app token issue`` and for tests. HS* tokens are signed with the shared secret;
RS*/ES*/PS*/EdDSA tokens need the private key, which flowgate itself never holds.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from app.infra.settings import JWTSettings


def issue_token(
    settings: JWTSettings,
    *,
    user_id: str,
    name: str | None = None,
    role: str | None = None,
    ttl_seconds: int = 3600,
    private_key: str | None = None,
) -> str:
    """A token for ``user_id`` that expires in ``ttl_seconds``.

    Without ``private_key`` it is signed with the first HS* algorithm of the settings; with one,
    with the first other algorithm. Raises :class:`ValueError` when no algorithm fits.
    """
    algorithm = _algorithm(settings, asymmetric=private_key is not None)
    key = private_key if private_key is not None else settings.secret
    if not key:
        raise ValueError(f"FLOWGATE_JWT_SECRET is not set: issuing {algorithm} tokens needs it")
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + ttl_seconds}
    optional = {"name": name, "role": role, "iss": settings.issuer, "aud": settings.audience}
    claims.update({claim: value for claim, value in optional.items() if value is not None})
    try:
        return jwt.encode(claims, key, algorithm=algorithm)
    except (jwt.PyJWTError, ValueError, TypeError):
        raise ValueError(f"the given key cannot sign {algorithm} tokens") from None


def _algorithm(settings: JWTSettings, *, asymmetric: bool) -> str:
    for algorithm in settings.algorithms:
        if algorithm.startswith("HS") != asymmetric:
            return algorithm
    configured = ", ".join(settings.algorithms) or "nothing"
    if asymmetric:
        raise ValueError(
            f"FLOWGATE_JWT_ALGORITHMS uses {configured}: a private key was given, "
            "but no algorithm signs with one"
        )
    raise ValueError(f"FLOWGATE_JWT_ALGORITHMS uses {configured}: issuing needs a private key")
