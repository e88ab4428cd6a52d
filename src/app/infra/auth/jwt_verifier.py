"""The :class:`~app.domain.ports.TokenVerifier` adapter: verifies JWTs with pyjwt.

The accepted algorithms come from settings only, never from the token's header. Each accepted
algorithm is bound to one key at construction: HS* to the shared secret, the others to the PEM
public key or, without one, to the keys of the JWKS URL. A token is checked with the key of its
algorithm alone, so an HS256 token can never be checked against a public key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import msgspec
from jwt.algorithms import get_default_algorithms

from app.domain.errors import InvalidToken
from app.domain.users import User
from app.infra.auth.jwks import JWKSCache
from app.infra.settings import JWTSettings, SettingsError

JWKS_MAX_AGE = 300.0
JWKS_MIN_REFETCH_INTERVAL = 30.0
JWKS_TIMEOUT = 5.0


class _Claims(msgspec.Struct):
    sub: str | int
    exp: float
    name: str | None = None
    #: bisheng puts a list of role ids here for users who are not admins.
    role: str | list[int | str] | None = None


class _BishengSubject(msgspec.Struct):
    """The JSON object that bisheng tokens carry, as a string, in ``sub``."""

    user_id: int | str
    user_name: str | None = None
    role: str | list[int | str] | None = None


_decode_bisheng_subject = msgspec.json.Decoder(_BishengSubject).decode


class JWTVerifier:
    def __init__(
        self,
        settings: JWTSettings,
        http_client: httpx.AsyncClient | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Bind each algorithm of ``settings`` to its key; raise :class:`SettingsError` if one
        has none. ``http_client`` fetches the JWKS (a client is made if none is given, and
        :meth:`aclose` closes it); ``clock`` times the JWKS cache.
        """
        self._audience = settings.audience
        self._issuer = settings.issuer
        self._leeway = settings.leeway
        self._jwt = jwt.PyJWT(
            options={
                "require": ["exp"],
                "verify_aud": settings.audience is not None,
                # ``sub`` may be an integer; _user() checks it.
                "verify_sub": False,
            }
        )
        self._algorithms = frozenset(settings.algorithms)
        self._keys = _static_keys(settings)
        self._owned_client: httpx.AsyncClient | None = None
        self._jwks: JWKSCache | None = None
        unbound = self._algorithms - self._keys.keys()
        if unbound:
            if settings.jwks_url is None:
                raise SettingsError(
                    f"FLOWGATE_JWT_ALGORITHMS has {', '.join(sorted(unbound))}: "
                    "set FLOWGATE_JWT_PUBLIC_KEY or FLOWGATE_JWT_JWKS_URL"
                )
            if http_client is None:
                http_client = self._owned_client = httpx.AsyncClient(timeout=JWKS_TIMEOUT)
            self._jwks = JWKSCache(
                settings.jwks_url,
                http_client,
                max_age=JWKS_MAX_AGE,
                min_refetch_interval=JWKS_MIN_REFETCH_INTERVAL,
                clock=clock,
            )

    async def verify(self, token: str) -> User:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise InvalidToken(f"malformed token: {error}") from None
        key = await self._key(header)
        try:
            payload = self._jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
            )
        except jwt.PyJWTError as error:
            raise InvalidToken(f"token rejected: {type(error).__name__}: {error}") from None
        return _user(payload)

    async def aclose(self) -> None:
        """Close the HTTP client this verifier made, if it made one."""
        if self._owned_client is not None:
            await self._owned_client.aclose()

    async def _key(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise InvalidToken("the token's algorithm is not accepted")
        if alg in self._keys:
            return self._keys[alg]
        assert self._jwks is not None  # __init__ binds every other algorithm to the JWKS
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("the token names no kid")
        key = await self._jwks.key(kid)
        if key is None:
            raise InvalidToken("no key of the JWKS matches the token's kid")
        return key


def _static_keys(settings: JWTSettings) -> dict[str, Any]:
    """Each algorithm that a secret or the PEM public key serves, with its key, parsed once."""
    algorithms = get_default_algorithms()
    if not settings.algorithms:
        raise SettingsError("FLOWGATE_JWT_ALGORITHMS names no algorithm")
    keys: dict[str, Any] = {}
    for alg in settings.algorithms:
        if alg.lower() == "none" or alg not in algorithms:
            raise SettingsError(f"FLOWGATE_JWT_ALGORITHMS: {alg!r} is not a signing algorithm")
        if alg.startswith("HS"):
            if not settings.secret:
                raise SettingsError(f"FLOWGATE_JWT_ALGORITHMS has {alg}: set FLOWGATE_JWT_SECRET")
            material = settings.secret
        elif settings.public_key is not None:
            material = settings.public_key
        else:
            continue
        try:
            keys[alg] = algorithms[alg].prepare_key(material)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise SettingsError(
                f"FLOWGATE_JWT_PUBLIC_KEY is not a PEM public key that {alg} can use"
            ) from None
    return keys


def _user(payload: dict[str, Any]) -> User:
    try:
        claims = msgspec.convert(payload, _Claims)
    except msgspec.ValidationError as error:
        raise InvalidToken(f"bad claims: {error}") from None
    name, role = claims.name, claims.role
    if isinstance(claims.sub, int):
        user_id = str(claims.sub)
    elif claims.sub.startswith("{"):
        try:
            subject = _decode_bisheng_subject(claims.sub)
        except msgspec.DecodeError as error:
            raise InvalidToken(f"bad bisheng subject: {error}") from None
        user_id = str(subject.user_id)
        name = subject.user_name if subject.user_name is not None else name
        role = subject.role if subject.role is not None else role
    else:
        user_id = claims.sub
    if not user_id:
        raise InvalidToken("the token's subject is empty")
    return User(
        id=user_id,
        name=name,
        role=role if isinstance(role, str) else None,
        expires_at=claims.exp,
    )
