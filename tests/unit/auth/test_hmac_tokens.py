"""The HMAC fast path (app.infra.auth.hmac_tokens) against pyjwt itself: on every token of a
corpus of valid, tampered and malformed ones, it accepts only what pyjwt accepts, with the same
payload, and it does accept the plainly valid ones (else the verifier would never use it)."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import random
import time
import warnings
from typing import Any

import pytest

from app.infra.auth.hmac_tokens import MAX_KNOWN_HEADERS, HmacTokenCheck
from app.infra.auth.jwt_verifier import JWTVerifier, _strict_json
from app.infra.settings import JWTSettings
from tests.unit.auth.test_jwt_verifier import HS256, SECRET, _b64

NOW = time.time()
PLAIN = dataclasses.replace(HS256, leeway=0.0)
WITH_AUDIENCE = dataclasses.replace(HS256, audience="flowgate", issuer="bisheng", leeway=30.0)


def _signed(header: bytes | dict[str, Any], payload: bytes | dict[str, Any]) -> str:
    header_part = _b64(header if isinstance(header, bytes) else json.dumps(header).encode())
    payload_part = _b64(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    return _signed_segments(header_part, payload_part)


def _signed_segments(header_part: str, payload_part: str) -> str:
    """A token whose segments are taken as given (however encoded), signed over them."""
    signing_input = f"{header_part}.{payload_part}".encode()
    signature = hmac.new(SECRET.encode(), signing_input, hashlib.sha256).digest()
    return f"{header_part}.{payload_part}.{_b64(signature)}"


GOOD_HEADER = {"alg": "HS256", "typ": "JWT"}


def _claims(**extra: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "u1", "exp": int(NOW) + 600, "iat": int(NOW) - 5}
    claims.update(extra)
    return {k: v for k, v in claims.items() if v is not _DROP}


_DROP = object()

VALID = [
    _signed(GOOD_HEADER, _claims()),
    _signed({"alg": "HS256"}, _claims(iat=_DROP)),
    _signed(GOOD_HEADER, _claims(nbf=int(NOW) - 1, jti="j1", name="Ann", role="admin")),
    _signed({"alg": "HS256", "kid": "k1"}, _claims(exp=NOW + 600.5)),
    _signed(GOOD_HEADER, _claims(sub=42, aud="flowgate", iss="bisheng")),
    _signed(GOOD_HEADER, _claims(aud=["other", "flowgate"], iss="bisheng")),
]

CRAFTED = [
    # claims
    _signed(GOOD_HEADER, _claims(exp=_DROP)),
    _signed(GOOD_HEADER, _claims(exp=None)),
    _signed(GOOD_HEADER, _claims(exp=int(NOW) - 10)),
    _signed(GOOD_HEADER, _claims(exp=str(int(NOW) + 600))),
    _signed(GOOD_HEADER, _claims(exp="soon")),
    _signed(GOOD_HEADER, _claims(exp=True)),
    _signed(GOOD_HEADER, _claims(exp=[1])),
    _signed(GOOD_HEADER, _claims(exp=10**400)),
    _signed(GOOD_HEADER, b'{"sub": "u1", "exp": Infinity}'),
    _signed(GOOD_HEADER, b'{"sub": "u1", "exp": NaN}'),
    _signed(GOOD_HEADER, _claims(iat=int(NOW) + 3600)),
    _signed(GOOD_HEADER, _claims(iat=int(NOW) + 10)),
    _signed(GOOD_HEADER, _claims(iat="yesterday")),
    _signed(GOOD_HEADER, _claims(nbf=int(NOW) + 3600)),
    _signed(GOOD_HEADER, _claims(nbf=int(NOW) + 10)),
    _signed(GOOD_HEADER, _claims(nbf={})),
    _signed(GOOD_HEADER, _claims(jti=7)),
    _signed(GOOD_HEADER, _claims(aud="elsewhere", iss="bisheng")),
    _signed(GOOD_HEADER, _claims(aud=["flowgate", 1], iss="bisheng")),
    _signed(GOOD_HEADER, _claims(aud=[], iss="bisheng")),
    _signed(GOOD_HEADER, _claims(aud={"flowgate": 1}, iss="bisheng")),
    _signed(GOOD_HEADER, _claims(aud="flowgate", iss="someone")),
    _signed(GOOD_HEADER, _claims(aud="flowgate", iss=["bisheng"])),
    _signed(GOOD_HEADER, _claims(aud="flowgate")),
    _signed(GOOD_HEADER, _claims(iss="bisheng")),
    _signed(GOOD_HEADER, b'{"sub": "u1", "role": "user", "role": "admin", "exp": 99999999999}'),
    _signed(GOOD_HEADER, b'["sub", "u1"]'),
    _signed(GOOD_HEADER, b"not json"),
    _signed(GOOD_HEADER, b"\xff\xfe"),
    # headers
    _signed({"alg": "HS512"}, _claims()),
    _signed({"alg": "none"}, _claims()),
    _signed({"typ": "JWT"}, _claims()),
    _signed({"alg": "HS256", "crit": ["exp"]}, _claims()),
    _signed({"alg": "HS256", "b64": False, "crit": ["b64"]}, _claims()),
    _signed({"alg": "HS256", "kid": 3}, _claims()),
    _signed({"alg": "HS256", "jku": "https://example.test/keys"}, _claims()),
    _signed(b'["HS256"]', _claims()),
    _signed(b'{"alg": "HS256", "alg": "none"}', _claims()),
    _signed(b'{"alg": "none", "alg": "HS256"}', _claims()),
    _signed(b"{", _claims()),
]


def _odd_encodings(claims: dict[str, Any]) -> list[str]:
    """Signed over segments that are not plain canonical base64url: padded, with a character
    outside the alphabet, with stray bits in the last character, standard base64's ``+/``."""
    header_part = _b64(json.dumps(GOOD_HEADER).encode())
    raw = json.dumps(claims).encode()
    while len(raw) % 3 == 0:  # a payload whose encoding ends in a partial group
        raw += b" "
    payload_part = _b64(raw)
    last = payload_part[-1]
    stray = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    bumped = stray[stray.index(last) + 1]  # same 6 bits but the last ones set
    standard = base64.b64encode(raw + b"\xfb\xff").decode().rstrip("=")
    return [
        _signed_segments(header_part, payload_part + "=" * (-len(payload_part) % 4)),
        _signed_segments(header_part, payload_part[:4] + "!" + payload_part[4:]),
        _signed_segments(header_part, payload_part[:4] + " " + payload_part[4:]),
        _signed_segments(header_part, payload_part[:-1] + bumped),
        _signed_segments(header_part + "=", payload_part),
        _signed_segments(header_part, standard),
    ]


def _malformed(token: str) -> list[str]:
    header, payload, signature = token.split(".")
    unpadded = (4 - len(payload) % 4) % 4
    return [
        "",
        ".",
        "..",
        f"{header}.{payload}",
        f"{header}.{payload}.{signature}.x",
        f"{header}.{payload}.",
        f"{header}.{payload}.{signature}=",
        f"{header}.{payload}{'=' * unpadded}.{signature}",
        f"{header}.{payload}.{signature[:-1]}",
        f"{header}.{payload}.{signature}A",
        f" {token}",
        f"{token}\n",
        token.replace(".", ".é", 1),
        f"{header}.{payload}!.{signature}",
        f"{header}.{payload[:-1]}{'B' if payload[-1] == 'A' else 'A'}.{signature}",
    ]


def _mutations(token: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/"
    out = []
    for _ in range(count):
        chars = list(token)
        position = rng.randrange(len(chars))
        chars[position] = rng.choice(alphabet)
        out.append("".join(chars))
    return out


def _pyjwt(settings: JWTSettings, token: str) -> dict[str, Any] | None:
    """pyjwt's own verdict, as the verifier asks it (its strict payload hook included)."""
    verifier = JWTVerifier(settings)
    verifier._fast = None  # the reference: pyjwt alone
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return verifier._jwt.decode(  # type: ignore[no-any-return]
                token,
                verifier._only[1] if verifier._only else "",
                algorithms=list(settings.algorithms),
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway,
            )
    except Exception:
        return None


def _fast(settings: JWTSettings) -> HmacTokenCheck:
    check = JWTVerifier(settings)._fast
    assert check is not None  # one HS algorithm, one long enough secret
    return check


@pytest.mark.parametrize("settings", [PLAIN, WITH_AUDIENCE], ids=["plain", "audience+issuer"])
def test_the_fast_path_accepts_only_what_pyjwt_accepts_with_the_same_payload(
    settings: JWTSettings,
) -> None:
    check = _fast(settings)
    corpus = VALID + CRAFTED + _odd_encodings(_claims())
    for token in VALID:
        corpus += _malformed(token) + _mutations(token, 120, seed=len(token))
    accepted = 0
    for token in corpus:
        fast = check.check(token)
        if fast is not None:
            accepted += 1
            assert _pyjwt(settings, token) == fast, token
    # It is used: the plainly valid tokens for these settings all pass it.
    usable = [t for t in VALID if _pyjwt(settings, t) is not None]
    assert usable and all(check.check(t) is not None for t in usable)
    assert accepted >= len(usable)


@pytest.mark.parametrize("settings", [PLAIN, WITH_AUDIENCE], ids=["plain", "audience+issuer"])
def test_what_pyjwt_refuses_the_fast_path_leaves_to_it(settings: JWTSettings) -> None:
    check = _fast(settings)
    refused = [t for t in CRAFTED if _pyjwt(settings, t) is None]
    assert len(refused) > 20  # the corpus does probe pyjwt's refusals
    assert [t for t in refused if check.check(t) is not None] == []


def test_remembered_headers_change_no_verdict_and_stay_bounded() -> None:
    # One check sees every token (refused headers first, then again once good ones are known);
    # a fresh check per token knows no header: their verdicts must agree on every token.
    shared = _fast(PLAIN)
    many_kids = [_signed({"alg": "HS256", "kid": f"k{i}"}, _claims()) for i in range(150)]
    corpus = CRAFTED + VALID + CRAFTED + many_kids + VALID + _odd_encodings(_claims()) + CRAFTED
    for token in corpus:
        assert shared.check(token) == _fast(PLAIN).check(token), token
    assert 0 < len(shared._known_headers) <= MAX_KNOWN_HEADERS


def test_a_time_claim_is_read_as_pyjwt_reads_it() -> None:
    # pyjwt takes int() of a time claim: a numeric string or a float counts there, so here too.
    check = _fast(PLAIN)
    for exp in (str(int(NOW) + 600), NOW + 600.9):
        token = _signed(GOOD_HEADER, _claims(exp=exp))
        assert check.check(token) == _pyjwt(PLAIN, token) is not None


def test_the_verifier_uses_it_only_for_one_hmac_secret_long_enough() -> None:
    assert JWTVerifier(HS256)._fast is not None
    assert JWTVerifier(dataclasses.replace(HS256, algorithms=("HS256", "HS384")))._fast is None
    # 54 bytes are short for HS512 (64): pyjwt warns on every decode, so pyjwt decodes.
    assert JWTVerifier(dataclasses.replace(HS256, algorithms=("HS512",)))._fast is None


def test_strict_json_is_what_refuses_a_repeated_key() -> None:
    with pytest.raises(Exception, match="repeats a key"):
        _strict_json(b'{"a": 1, "a": 2}')
