"""Token verification and issuing with pyjwt.

The verifier (and httpx, for the JWKS) is imported on first use, so that ``app token issue``,
which only issues, does not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from app.infra.auth.token_issuer import issue_token

if TYPE_CHECKING:
    from app.infra.auth.jwt_verifier import JWTVerifier

__all__ = ["JWTVerifier", "issue_token"]


def __getattr__(name: str) -> Any:
    if name == "JWTVerifier":
        from app.infra.auth.jwt_verifier import JWTVerifier

        return JWTVerifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
