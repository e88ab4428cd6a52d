"""Token verification and issuing with pyjwt."""

from app.infra.auth.jwt_verifier import JWTVerifier
from app.infra.auth.token_issuer import issue_token

__all__ = ["JWTVerifier", "issue_token"]
