"""JWTVerifier with a shared secret or a PEM public key, and issue_token."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import time
import warnings
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from app.domain.errors import InvalidToken
from app.domain.users import User
from app.infra.auth import JWTVerifier, issue_token
from app.infra.settings import JWTSettings, SettingsError

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
HS256 = JWTSettings(
    secret=SECRET,
    algorithms=("HS256",),
    public_key=None,
    jwks_url=None,
    audience=None,
    issuer=None,
    leeway=10.0,
)


def _pem_pair(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[str, str]:
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private_pem, public_pem


@pytest.fixture(scope="module")
def rsa_pems() -> tuple[str, str]:
    return _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))


@pytest.fixture(scope="module")
def ec_pems() -> tuple[str, str]:
    return _pem_pair(ec.generate_private_key(ec.SECP256R1()))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value).encode())


def _hs256(claims: dict[str, Any], key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def _claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "u1", "exp": int(time.time()) + 600, **extra}


async def _rejected(verifier: JWTVerifier, token: str) -> str:
    with pytest.raises(InvalidToken) as caught:
        await verifier.verify(token)
    return str(caught.value)


async def test_valid_hs256_token() -> None:
    token = issue_token(HS256, user_id="u1", ttl_seconds=600)

    user = await JWTVerifier(HS256).verify(token)

    assert user.id == "u1"
    assert user.name is None and user.role is None
    assert user.expires_at is not None
    assert 590 <= user.expires_at - time.time() <= 600


async def test_name_and_role_claims() -> None:
    token = issue_token(HS256, user_id="u1", name="Alice", role="admin")

    user = await JWTVerifier(HS256).verify(token)

    assert (user.id, user.name, user.role, user.is_admin) == ("u1", "Alice", "admin", True)


async def test_bisheng_subject() -> None:
    subject = json.dumps({"user_id": 7, "user_name": "alice", "role": "admin"})
    exp = int(time.time()) + 600

    user = await JWTVerifier(HS256).verify(_hs256({"sub": subject, "exp": exp}))

    assert user == User(id="7", name="alice", role="admin", expires_at=exp)


async def test_bisheng_subject_with_role_ids_has_no_role() -> None:
    subject = json.dumps({"user_id": 8, "user_name": "bob", "role": [2, 3]})

    user = await JWTVerifier(HS256).verify(_hs256(_claims(sub=subject)))

    assert (user.id, user.name, user.role) == ("8", "bob", None)


async def test_integer_subject_is_stringified() -> None:
    user = await JWTVerifier(HS256).verify(_hs256(_claims(sub=42)))

    assert user.id == "42"


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": int(time.time()) + 600}, id="no-sub"),
        pytest.param(_claims(sub=""), id="empty-sub"),
        pytest.param(_claims(sub=True), id="boolean-sub"),
        pytest.param(_claims(sub=["u1"]), id="list-sub"),
        pytest.param(_claims(sub="{not json"), id="broken-bisheng-sub"),
        pytest.param(_claims(sub=json.dumps({"user_name": "x"})), id="bisheng-sub-without-id"),
        pytest.param(_claims(sub=json.dumps({"user_id": ""})), id="bisheng-sub-empty-id"),
        pytest.param(_claims(name=5), id="non-string-name"),
    ],
)
async def test_bad_identity_is_rejected(claims: dict[str, Any]) -> None:
    await _rejected(JWTVerifier(HS256), _hs256(claims))


async def test_expired_beyond_leeway_is_rejected() -> None:
    token = _hs256(_claims(exp=int(time.time()) - 30))

    assert "expired" in await _rejected(JWTVerifier(HS256), token)


async def test_expired_within_leeway_is_accepted() -> None:
    token = _hs256(_claims(exp=int(time.time()) - 3))

    assert (await JWTVerifier(HS256).verify(token)).id == "u1"


async def test_missing_exp_is_rejected() -> None:
    assert "exp" in await _rejected(JWTVerifier(HS256), _hs256({"sub": "u1"}))


async def test_not_yet_valid_is_rejected() -> None:
    await _rejected(JWTVerifier(HS256), _hs256(_claims(nbf=int(time.time()) + 600)))


async def test_alg_none_is_rejected() -> None:
    token = f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(_claims())}."

    await _rejected(JWTVerifier(HS256), token)


async def test_other_secret_is_rejected() -> None:
    token = _hs256(_claims(), key="another-secret-that-is-long-enough-for-hs256-0123")

    await _rejected(JWTVerifier(HS256), token)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
async def test_each_hmac_algorithm_checks_the_whole_signature(alg: str) -> None:
    # The verifier signs with hmac.digest itself (jwt_verifier._CheckedSecret): a token of
    # the secret passes, one flipped bit anywhere in the signature, or the same secret with
    # another hash, does not.
    secret = SECRET * 2  # long enough for HS512 (64 bytes)
    verifier = JWTVerifier(dataclasses.replace(HS256, secret=secret, algorithms=(alg,)))
    token = jwt.encode(_claims(), secret, algorithm=alg)
    assert (await verifier.verify(token)).id == "u1"
    signing_input, _, signature = token.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    for at in (0, len(raw) // 2, len(raw) - 1):
        flipped = bytearray(raw)
        flipped[at] ^= 0x01
        await _rejected(verifier, f"{signing_input}.{_b64(bytes(flipped))}")
    other = "HS256" if alg != "HS256" else "HS512"
    header = _segment({"alg": alg, "typ": "JWT"})
    body = signing_input.partition(".")[2]
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[other]
    wrong = hmac.new(secret.encode(), f"{header}.{body}".encode(), digest).digest()
    await _rejected(verifier, f"{header}.{body}.{_b64(wrong)}")


async def test_a_secret_short_for_its_hash_still_gets_pyjwts_warning() -> None:
    # 54 bytes: enough for HS256's 32, short of HS512's 64. The verdict is kept from
    # construction, and pyjwt still warns as it would have.
    verifier = JWTVerifier(dataclasses.replace(HS256, algorithms=("HS512",)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyjwt's encode warns too
        token = jwt.encode(_claims(), SECRET, algorithm="HS512")
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning, match="64 bytes"):
        assert (await verifier.verify(token)).id == "u1"


def _hs256_signed_with(claims: dict[str, Any], key: str) -> str:
    """An HS256 token signed by hand: pyjwt refuses to sign with a PEM key as the secret."""
    signing_input = f"{_segment({'alg': 'HS256', 'typ': 'JWT'})}.{_segment(claims)}"
    signature = hmac.new(key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


async def test_key_confusion_hs256_signed_with_public_key_is_rejected(
    rsa_pems: tuple[str, str],
) -> None:
    _, public_pem = rsa_pems
    rs256 = dataclasses.replace(HS256, secret=None, algorithms=("RS256",), public_key=public_pem)

    await _rejected(JWTVerifier(rs256), _hs256_signed_with(_claims(), public_pem))


async def test_key_confusion_rejected_when_hs256_and_rs256_are_both_accepted(
    rsa_pems: tuple[str, str],
) -> None:
    private_pem, public_pem = rsa_pems
    both = dataclasses.replace(HS256, algorithms=("HS256", "RS256"), public_key=public_pem)
    verifier = JWTVerifier(both)

    await _rejected(verifier, _hs256_signed_with(_claims(), public_pem))
    assert (await verifier.verify(issue_token(both, user_id="u1"))).id == "u1"
    assert (await verifier.verify(issue_token(both, user_id="u2", private_key=private_pem))).id == (
        "u2"
    )


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_asymmetric_token(
    algorithm: str, rsa_pems: tuple[str, str], ec_pems: tuple[str, str]
) -> None:
    private_pem, public_pem = rsa_pems if algorithm == "RS256" else ec_pems
    settings = dataclasses.replace(
        HS256, secret=None, algorithms=(algorithm,), public_key=public_pem
    )
    token = issue_token(settings, user_id="u1", name="Alice", private_key=private_pem)

    user = await JWTVerifier(settings).verify(token)

    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert (user.id, user.name) == ("u1", "Alice")


async def test_token_of_another_key_pair_is_rejected(rsa_pems: tuple[str, str]) -> None:
    _, public_pem = rsa_pems
    other_private_pem, _ = _pem_pair(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    settings = dataclasses.replace(HS256, secret=None, algorithms=("RS256",), public_key=public_pem)

    token = issue_token(settings, user_id="u1", private_key=other_private_pem)

    await _rejected(JWTVerifier(settings), token)


async def test_header_algorithm_not_configured_is_rejected(
    rsa_pems: tuple[str, str], ec_pems: tuple[str, str]
) -> None:
    es256 = dataclasses.replace(HS256, secret=None, algorithms=("ES256",), public_key=ec_pems[1])
    token = jwt.encode(_claims(), rsa_pems[0], algorithm="RS256")

    await _rejected(JWTVerifier(es256), token)


AUDIENCE_AND_ISSUER = dataclasses.replace(HS256, audience="flowgate", issuer="https://idp.test")


async def test_configured_audience_and_issuer_are_accepted() -> None:
    token = issue_token(AUDIENCE_AND_ISSUER, user_id="u1")

    assert (await JWTVerifier(AUDIENCE_AND_ISSUER).verify(token)).id == "u1"


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param(_claims(aud="other", iss="https://idp.test"), id="wrong-audience"),
        pytest.param(_claims(iss="https://idp.test"), id="no-audience"),
        pytest.param(_claims(aud="flowgate", iss="https://evil.test"), id="wrong-issuer"),
        pytest.param(_claims(aud="flowgate"), id="no-issuer"),
    ],
)
async def test_wrong_audience_or_issuer_is_rejected(claims: dict[str, Any]) -> None:
    await _rejected(JWTVerifier(AUDIENCE_AND_ISSUER), _hs256(claims))


async def test_audience_and_issuer_are_not_checked_unless_configured() -> None:
    token = _hs256(_claims(aud="someone", iss="https://anyone.test"))

    assert (await JWTVerifier(HS256).verify(token)).id == "u1"


MALFORMED = ["", "abc", "a.b.c", "a.b", "...", "x" * 2000, f"{_segment({'alg': 'HS256'})}.e30.AAAA"]


@pytest.mark.parametrize("token", MALFORMED)
async def test_malformed_token_is_rejected(token: str) -> None:
    await _rejected(JWTVerifier(HS256), token)


async def test_messages_never_contain_the_token(rsa_pems: tuple[str, str]) -> None:
    _, public_pem = rsa_pems
    now = int(time.time())
    failing = [
        _hs256(_claims(exp=now - 60)),
        _hs256({"sub": "u1"}),
        _hs256(_claims(), key="another-secret-that-is-long-enough-for-hs256-0123"),
        _hs256(_claims(sub="{not json")),
        _hs256(_claims(aud="nobody")),
        f"{_segment({'alg': 'none'})}.{_segment(_claims())}.",
        _hs256_signed_with(_claims(), public_pem),
        *MALFORMED[1:],
    ]
    verifier = JWTVerifier(dataclasses.replace(HS256, audience="flowgate"))

    for token in failing:
        message = await _rejected(verifier, token)
        assert token not in message
        for segment in token.split("."):
            if len(segment) > 8:
                assert segment not in message


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        pytest.param({"algorithms": ("RS256",)}, "FLOWGATE_JWT_PUBLIC_KEY", id="rs256-no-key"),
        pytest.param({"algorithms": ("none",)}, "'none'", id="alg-none"),
        pytest.param({"algorithms": ()}, "no algorithm", id="no-algorithm"),
        pytest.param({"secret": None}, "FLOWGATE_JWT_SECRET", id="hs256-no-secret"),
        pytest.param(
            {"algorithms": ("RS256",), "public_key": "not a pem"},
            "FLOWGATE_JWT_PUBLIC_KEY",
            id="bad-pem",
        ),
    ],
)
def test_unusable_settings_are_refused(changes: dict[str, Any], names: str) -> None:
    with pytest.raises(SettingsError, match=names):
        JWTVerifier(dataclasses.replace(HS256, **changes))


def test_public_key_of_the_wrong_type_is_refused(ec_pems: tuple[str, str]) -> None:
    _, ec_public_pem = ec_pems
    settings = dataclasses.replace(HS256, algorithms=("RS256",), public_key=ec_public_pem)

    with pytest.raises(SettingsError, match="RS256"):
        JWTVerifier(settings)


def test_issued_token_carries_the_configured_claims() -> None:
    token = issue_token(AUDIENCE_AND_ISSUER, user_id="u1", role="admin", ttl_seconds=60)

    claims = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience="flowgate", issuer="https://idp.test"
    )

    assert claims["sub"] == "u1" and claims["role"] == "admin"
    assert claims["exp"] - claims["iat"] == 60
    assert "name" not in claims


def test_issuing_asymmetric_without_private_key_is_refused(rsa_pems: tuple[str, str]) -> None:
    settings = dataclasses.replace(HS256, algorithms=("RS256",), public_key=rsa_pems[1])

    with pytest.raises(ValueError, match="uses RS256: issuing needs a private key"):
        issue_token(settings, user_id="u1")


def test_issuing_with_private_key_needs_an_asymmetric_algorithm(
    rsa_pems: tuple[str, str],
) -> None:
    with pytest.raises(ValueError, match="no algorithm signs with one"):
        issue_token(HS256, user_id="u1", private_key=rsa_pems[0])


def test_issuing_with_the_wrong_kind_of_private_key_is_refused(ec_pems: tuple[str, str]) -> None:
    settings = dataclasses.replace(HS256, algorithms=("RS256",))

    with pytest.raises(ValueError, match="cannot sign RS256"):
        issue_token(settings, user_id="u1", private_key=ec_pems[0])
