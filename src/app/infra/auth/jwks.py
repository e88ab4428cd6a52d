"""The public keys a JWKS URL publishes, fetched with httpx and cached.

The cache is refreshed when it is older than ``max_age``. A token that names an unknown ``kid``
(a key rotated in at the identity provider) triggers a refetch, but no fetch of any kind starts
less than ``min_refetch_interval`` after the previous one, so that a flood of tokens with made-up
``kid``s cannot hammer the JWKS host.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import msgspec

from app.domain.errors import StoreUnavailable


class _JWKSDocument(msgspec.Struct):
    keys: list[dict[str, Any]]


_decode_document = msgspec.json.Decoder(_JWKSDocument).decode


class JWKSCache:
    def __init__(
        self,
        url: str,
        http_client: httpx.AsyncClient,
        *,
        max_age: float,
        min_refetch_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._host = httpx.URL(url).host
        self._client = http_client
        self._max_age = max_age
        self._min_refetch_interval = min_refetch_interval
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK | None:
        """The signing key with this ``kid``, or None if the JWKS has none.

        Raises :class:`StoreUnavailable` when the keys are needed and the host cannot be reached.
        """
        if self._is_fresh(self._clock()) and kid in self._keys:
            return self._keys[kid]
        async with self._lock:
            # Another caller may have fetched while this one waited for the lock.
            now = self._clock()
            fresh = self._is_fresh(now)
            if not (fresh and kid in self._keys):
                if self._may_fetch(now):
                    await self._fetch(now)
                elif not fresh:
                    raise StoreUnavailable(f"the JWKS host {self._host} failed moments ago")
            return self._keys.get(kid)

    def _is_fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._max_age

    def _may_fetch(self, now: float) -> bool:
        return self._attempted_at is None or now - self._attempted_at >= self._min_refetch_interval

    async def _fetch(self, now: float) -> None:
        self._attempted_at = now
        try:
            response = await self._client.get(self._url)
            response.raise_for_status()
            key_set = jwt.PyJWKSet(_decode_document(response.content).keys)
        except (httpx.HTTPError, msgspec.DecodeError, jwt.PyJWTError) as error:
            raise StoreUnavailable(
                f"cannot load the JWKS from {self._host}: {type(error).__name__}"
            ) from None
        self._keys = {
            key.key_id: key
            for key in key_set.keys
            if key.key_id is not None and key.public_key_use != "enc"
        }
        self._fetched_at = now
