"""JWTVerifier against a JWKS served over a real socket by a small in-process HTTP server."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from app.domain.errors import InvalidToken, StoreUnavailable
from app.infra.auth import JWTVerifier, issue_token
from app.infra.settings import JWTSettings

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"


class JWKSServer:
    """Serves ``body`` with ``status`` at ``/jwks.json`` and counts the requests."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self._requests = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server._requests += 1
                    status, body = server.status, server.body
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/jwks.json"
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    def publish(self, *keys: dict[str, Any]) -> None:
        with self._lock:
            self.body = json.dumps({"keys": list(keys)}).encode()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join(timeout=5)


class Clock:
    """A monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class KeyPair:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self._private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def jwk(self) -> dict[str, Any]:
        public = RSAAlgorithm.to_jwk(self._private.public_key(), as_dict=True)
        return {**public, "kid": self.kid, "alg": "RS256", "use": "sig"}

    def token(self, user_id: str = "u1", kid: str | None = None) -> str:
        return self.signed(user_id, headers={"kid": kid or self.kid})

    def signed(self, user_id: str, headers: dict[str, Any]) -> str:
        claims = {"sub": user_id, "exp": int(time.time()) + 600}
        return jwt.encode(claims, self._private, algorithm="RS256", headers=headers)


@pytest.fixture(scope="module")
def key_1() -> KeyPair:
    return KeyPair("key-1")


@pytest.fixture(scope="module")
def key_2() -> KeyPair:
    return KeyPair("key-2")


@pytest.fixture
def server(key_1: KeyPair) -> Iterator[JWKSServer]:
    server = JWKSServer()
    server.publish(key_1.jwk)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=2.0) as client:
        yield client


def _settings(jwks_url: str, algorithms: tuple[str, ...] = ("RS256",)) -> JWTSettings:
    return JWTSettings(
        secret=SECRET,
        algorithms=algorithms,
        public_key=None,
        jwks_url=jwks_url,
        audience=None,
        issuer=None,
        leeway=10.0,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(server: JWKSServer, http_client: httpx.AsyncClient, clock: Clock) -> JWTVerifier:
    return JWTVerifier(_settings(server.url), http_client, clock=clock)


async def test_tokens_are_verified_by_kid(
    server: JWKSServer, verifier: JWTVerifier, key_1: KeyPair, key_2: KeyPair
) -> None:
    server.publish(key_1.jwk, key_2.jwk)

    assert (await verifier.verify(key_1.token("alice"))).id == "alice"
    assert (await verifier.verify(key_2.token("bob"))).id == "bob"
    assert server.requests == 1


async def test_token_signed_by_another_key_under_a_known_kid_is_rejected(
    server: JWKSServer, verifier: JWTVerifier, key_2: KeyPair
) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(key_2.token(kid="key-1"))


async def test_token_without_kid_is_rejected(verifier: JWTVerifier, key_1: KeyPair) -> None:
    with pytest.raises(InvalidToken):
        await verifier.verify(key_1.signed("u1", headers={}))


async def test_keys_are_refetched_when_the_cache_is_old(
    server: JWKSServer, verifier: JWTVerifier, clock: Clock, key_1: KeyPair
) -> None:
    await verifier.verify(key_1.token())
    clock.now += 299
    await verifier.verify(key_1.token())
    assert server.requests == 1

    clock.now += 2
    await verifier.verify(key_1.token())

    assert server.requests == 2


async def test_rotated_key_is_found_by_one_refetch(
    server: JWKSServer, verifier: JWTVerifier, clock: Clock, key_1: KeyPair, key_2: KeyPair
) -> None:
    await verifier.verify(key_1.token())
    server.publish(key_1.jwk, key_2.jwk)
    clock.now += 31

    assert (await verifier.verify(key_2.token("bob"))).id == "bob"
    assert (await verifier.verify(key_1.token("alice"))).id == "alice"
    assert server.requests == 2


async def test_unknown_kids_refetch_at_most_once_per_30_seconds(
    server: JWKSServer, verifier: JWTVerifier, clock: Clock, key_1: KeyPair, key_2: KeyPair
) -> None:
    await verifier.verify(key_1.token())
    server.publish(key_1.jwk, key_2.jwk)

    # Within 30 s of the last fetch, a new kid is not looked for.
    with pytest.raises(InvalidToken):
        await verifier.verify(key_2.token())
    assert server.requests == 1

    clock.now += 30
    made_up = [key_1.token(kid=f"made-up-{n}") for n in range(100)]
    results = await asyncio.gather(
        *(verifier.verify(token) for token in made_up), return_exceptions=True
    )
    for token in made_up[:20]:
        with pytest.raises(InvalidToken):
            await verifier.verify(token)

    assert all(isinstance(result, InvalidToken) for result in results)
    assert server.requests == 2
    assert (await verifier.verify(key_2.token("bob"))).id == "bob"
    assert server.requests == 2


async def test_hs256_tokens_need_no_jwks(
    server: JWKSServer, http_client: httpx.AsyncClient, key_1: KeyPair
) -> None:
    settings = _settings(server.url, algorithms=("HS256", "RS256"))
    verifier = JWTVerifier(settings, http_client)

    assert (await verifier.verify(issue_token(settings, user_id="u1"))).id == "u1"
    assert server.requests == 0
    assert (await verifier.verify(key_1.token("u2"))).id == "u2"
    assert server.requests == 1


def _closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/jwks.json"


async def test_unreachable_jwks_host_is_store_unavailable(key_1: KeyPair) -> None:
    verifier = JWTVerifier(_settings(_closed_port_url()))
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await verifier.verify(key_1.token())
    finally:
        await verifier.aclose()

    assert "127.0.0.1" in str(caught.value)
    assert "jwks.json" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(503, b"down for maintenance", id="http-error"),
        pytest.param(200, b"<html>not json</html>", id="not-json"),
        pytest.param(200, b'{"keys": [{"kty": "nonsense"}]}', id="no-usable-key"),
    ],
)
async def test_broken_jwks_is_store_unavailable_until_it_recovers(
    server: JWKSServer,
    verifier: JWTVerifier,
    clock: Clock,
    key_1: KeyPair,
    status: int,
    body: bytes,
) -> None:
    good_body = server.body
    server.status, server.body = status, body

    with pytest.raises(StoreUnavailable):
        await verifier.verify(key_1.token())
    # A failed fetch is not retried for 30 s: the next callers fail fast.
    with pytest.raises(StoreUnavailable):
        await verifier.verify(key_1.token())
    assert server.requests == 1

    server.status, server.body = 200, good_body
    clock.now += 30

    assert (await verifier.verify(key_1.token())).id == "u1"
    assert server.requests == 2


async def test_concurrent_first_verifications_share_one_fetch(
    server: JWKSServer, verifier: JWTVerifier, key_1: KeyPair
) -> None:
    users = await asyncio.gather(*(verifier.verify(key_1.token(f"u{n}")) for n in range(50)))

    assert [user.id for user in users] == [f"u{n}" for n in range(50)]
    assert server.requests == 1
