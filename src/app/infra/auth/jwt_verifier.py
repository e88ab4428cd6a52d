"""The :class:`~app.domain.ports.TokenVerifier` adapter: verifies JWTs with pyjwt.

The accepted algorithms come from settings only, never from the token's header. Each accepted
algorithm is bound to one key at construction: HS* to the shared secret, the others to the PEM
public key or, without one, to the keys of the JWKS URL. A token is checked with the key of its
algorithm alone, so an HS256 token can never be checked against a public key.

With one HMAC algorithm and its secret (the usual configuration) a token is first offered to
an accept-only fast path (:mod:`app.infra.auth.hmac_tokens`); whatever it does not plainly
accept, pyjwt decides.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import jwt
import msgspec
from jwt.algorithms import HMACAlgorithm, get_default_algorithms

from app.domain.errors import InvalidToken
from app.domain.frames import MAX_TOKEN_LENGTH
from app.domain.users import User
from app.infra.auth.hmac_tokens import HmacTokenCheck
from app.infra.auth.jwks import JWKSCache
from app.infra.settings import JWTSettings, SettingsError

JWKS_MAX_AGE = 300.0
JWKS_MIN_REFETCH_INTERVAL = 30.0
JWKS_TIMEOUT = 5.0
#: A user id is stored in ``String(64)`` columns (flow owner, chat session, message).
MAX_USER_ID_LENGTH = 64
#: The longest ``name`` claim kept (it is only shown, never stored).
MAX_NAME_LENGTH = 256

_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME_LENGTH)]
#: An integer user id: as a 64-bit integer it has at most 20 characters.
_IntId = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]


class _Claims(msgspec.Struct):
    sub: str | _IntId
    #: Finite (pyjwt checked it is a number; a float bound refuses inf and nan).
    exp: Annotated[float, msgspec.Meta(ge=0, le=1e12)]
    name: _Name | None = None
    #: bisheng puts a list of role ids here for users who are not admins.
    role: str | list[int | str] | None = None


class _BishengSubject(msgspec.Struct):
    """The JSON object that bisheng tokens carry, as a string, in ``sub``."""

    user_id: _IntId | str
    user_name: _Name | None = None
    role: str | list[int | str] | None = None


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook`` that refuses an object naming a key twice."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _DuplicateKey("a key is repeated")
    return found


def _strict_json(text: str | bytes) -> Any:
    """JSON whose objects name each key once, or :class:`InvalidToken`.

    msgspec and ``json`` keep the last of two values of a key, and other parsers the first:
    ``{"role": "user", "role": "admin"}`` would mean admin here and user to the issuer. An
    identity that two parsers may read differently is refused, never resolved.
    """
    try:
        return _STRICT_DECODER.decode(text if isinstance(text, str) else text.decode())
    except _DuplicateKey:
        raise InvalidToken("a claim object repeats a key") from None
    except (ValueError, RecursionError) as error:  # not JSON (or UTF-8), or nested too deep
        raise InvalidToken(f"claims are not JSON ({type(error).__name__})") from None


# Made once: ``json.loads`` with a hook builds a decoder on every call.
_STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


class _StrictPayloadJWT(jwt.PyJWT):
    """pyjwt, with the payload read strictly (:func:`_strict_json`) where pyjwt reads it: its
    hook for how a payload is decoded (``_decode_payload``, the one pyjwt's own tests override
    for compressed payloads). Its own ``json.loads`` keeps the last of two equal keys, and a
    second, strict parse after it cost a connect 7 µs in the benchmark."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        payload = _strict_json(decoded["payload"])
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


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
        self._jwt = _StrictPayloadJWT(
            options={
                "require": ["exp"],
                "verify_aud": settings.audience is not None,
                # ``sub`` may be an integer; _user() checks it.
                "verify_sub": False,
            }
        )
        self._algorithms = frozenset(settings.algorithms)
        self._keys = _static_keys(settings)
        self._only: tuple[str, jwt.PyJWK] | None = None
        self._fast: HmacTokenCheck | None = None
        if len(self._algorithms) == 1 and len(self._keys) == 1:
            self._only = next(iter(self._keys.items()))
            alg, key = self._only
            # A secret short for its hash is left to pyjwt, which warns on every decode.
            if isinstance(key.Algorithm, _CheckedSecret) and not key.Algorithm.short:
                self._fast = HmacTokenCheck(
                    alg,
                    key.Algorithm.keyed,
                    audience=settings.audience,
                    issuer=settings.issuer,
                    leeway=settings.leeway,
                    strict_json=_strict_json,
                )
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
        if len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken(f"token longer than {MAX_TOKEN_LENGTH} characters")
        if self._fast is not None and (payload := self._fast.check(token)) is not None:
            return _user(payload)  # plainly valid (app.infra.auth.hmac_tokens); else pyjwt
        if self._only is not None:
            # One algorithm, one key: pyjwt checks the header's alg against it while decoding,
            # and the header is read once instead of twice (a fifth of a verify's time).
            alg, key = self._only
        else:
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError as error:
                raise InvalidToken(f"malformed token: {error}") from None
            key = await self._key(header)
            alg = header["alg"]
        try:
            payload = self._jwt.decode(
                token,
                key,
                algorithms=[alg],
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


def _static_keys(settings: JWTSettings) -> dict[str, jwt.PyJWK]:
    """Each algorithm that a secret or the PEM public key serves, with its key, parsed once.

    As a :class:`jwt.PyJWK`: given a plain key, pyjwt prepares it again on every decode (for
    an HMAC secret that includes trying to load it as a DER public key), a PyJWK it uses as is.
    """
    algorithms = get_default_algorithms()
    if not settings.algorithms:
        raise SettingsError("FLOWGATE_JWT_ALGORITHMS names no algorithm")
    keys: dict[str, jwt.PyJWK] = {}
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
            algorithm = algorithms[alg]
            prepared = algorithm.prepare_key(material)
            key = keys[alg] = jwt.PyJWK(algorithm.to_jwk(prepared, as_dict=True), algorithm=alg)
        except (jwt.PyJWTError, ValueError, TypeError):
            raise SettingsError(
                f"FLOWGATE_JWT_PUBLIC_KEY is not a PEM public key that {alg} can use"
            ) from None
        if isinstance(algorithm, HMACAlgorithm):
            key.Algorithm = _CheckedSecret(algorithm.hash_alg, key.key)
    return keys


class _CheckedSecret(HMACAlgorithm):
    """An HMAC algorithm whose one secret was checked when the verifier was made.

    pyjwt (2.15) prepares a PyJWK's key again on every decode, and for an HMAC secret that
    means trying to parse it as a DER public key and as an X.509 certificate: a sixth of a
    connect's token check. It also checks the key's length against the hash's digest size
    (making a hash object to ask) and signs with ``hmac.new``. The secret cannot change, so it
    is checked once, its length's verdict kept, and the signature made from a copy of an HMAC
    keyed once (OpenSSL 3 looks the MAC up again in its provider on every one-shot call, and
    keys it again; a copy of the keyed state does neither: 0.9 against 1.3-1.6 µs).
    Together about a fifth of what pyjwt's decode cost per connect, with the same answers.
    """

    def __init__(self, hash_alg: Any, secret: bytes) -> None:
        super().__init__(hash_alg)
        self._secret = secret
        #: Keyed once; copied per signature (see the class docstring).
        self.keyed = hmac.new(secret, digestmod=hash_alg().name)
        self._length_warning = super().check_key_length(secret)
        self.short = self._length_warning is not None

    def prepare_key(self, key: str | bytes) -> bytes:
        if key is self._secret:
            return key
        return super().prepare_key(key)

    def check_key_length(self, key: bytes) -> str | None:
        if key is self._secret:
            return self._length_warning
        return super().check_key_length(key)

    def sign(self, msg: bytes, key: bytes) -> bytes:
        if key is not self._secret:
            return super().sign(msg, key)
        keyed = self.keyed.copy()
        keyed.update(msg)
        return keyed.digest()

    def verify(self, msg: bytes, key: bytes, sig: bytes) -> bool:
        return hmac.compare_digest(sig, self.sign(msg, key))


def _user(payload: dict[str, Any]) -> User:
    """The user a verified payload names, or :class:`InvalidToken` (the only error it raises).

    Strict: ``sub`` is a non-empty string or an integer (never a bool or a float), or a
    bisheng JSON object string whose keys are all distinct; the user id is 1–64 characters
    (the database's column) without control characters.
    """
    try:
        claims = msgspec.convert(payload, _Claims)
    except msgspec.ValidationError as error:
        raise InvalidToken(f"bad claims: {error}") from None
    name, role = claims.name, claims.role
    if isinstance(claims.sub, int):
        user_id = str(claims.sub)
    elif claims.sub.startswith("{"):
        try:
            subject = msgspec.convert(_strict_json(claims.sub), _BishengSubject)
        except msgspec.ValidationError as error:
            raise InvalidToken(f"bad bisheng subject: {error}") from None
        user_id = str(subject.user_id)
        name = subject.user_name if subject.user_name is not None else name
        role = subject.role if subject.role is not None else role
    else:
        user_id = claims.sub
    if not user_id:
        raise InvalidToken("the token's subject is empty")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise InvalidToken(f"the token's subject is longer than {MAX_USER_ID_LENGTH} characters")
    if not user_id.isprintable():
        raise InvalidToken("the token's subject holds control characters")
    return User(
        id=user_id,
        name=name,
        role=role if isinstance(role, str) else None,
        expires_at=claims.exp,
    )
