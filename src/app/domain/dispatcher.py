"""What happens to each frame a connection receives (PROTOCOL.md §4).

The API layer calls :meth:`FrameDispatcher.dispatch` once per received frame. Frames that every
feature understands (``ping``, ``auth``) are answered here; the rest go to the connection's
feature. A frame that cannot be served gets an ``error`` frame and the connection stays open.
"""

from __future__ import annotations

import asyncio
import logging
import time

import msgspec

from app.domain import frames
from app.domain.connection import Connection
from app.domain.errors import InvalidToken, StoreUnavailable
from app.domain.features.base import Feature, UnknownAction
from app.domain.frames import ErrorCode
from app.domain.ports import TokenVerifier
from app.domain.rejections import Rejection

logger = logging.getLogger(__name__)

_PING_DECODER = msgspec.json.Decoder(frames.PingRequest)
_AUTH_DECODER = msgspec.json.Decoder(frames.AuthRequest)


class RateLimiter:
    """A token bucket: ``rate`` frames a second on average, bursts of up to ``rate`` frames."""

    __slots__ = ("_allowance", "_capacity", "_checked", "_rate")

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(rate, 1.0)
        self._allowance = self._capacity
        self._checked = time.monotonic()

    def retry_after(self) -> float:
        """0 if a frame may pass now (and count it), else the seconds until one may."""
        now = time.monotonic()
        self._allowance = min(self._capacity, self._allowance + (now - self._checked) * self._rate)
        self._checked = now
        if self._allowance >= 1.0:
            self._allowance -= 1.0
            return 0.0
        return round((1.0 - self._allowance) / self._rate, 3)


class FrameDispatcher:
    """Per connection: rate limit, decode, route, and the token's expiry timer."""

    __slots__ = ("_connection", "_expiry", "_feature", "_limiter", "_verifier")

    def __init__(
        self,
        connection: Connection,
        feature: Feature,
        verifier: TokenVerifier,
        messages_per_second: float,
    ) -> None:
        self._connection = connection
        self._feature = feature
        self._verifier = verifier
        self._limiter = RateLimiter(messages_per_second)
        self._expiry: asyncio.TimerHandle | None = None
        self._arm_expiry()

    async def dispatch(self, raw: bytes | str) -> None:
        connection = self._connection
        retry_after = self._limiter.retry_after()
        if retry_after:
            await connection.send(
                frames.error(ErrorCode.RATE_LIMITED, "too many messages", retry_after)
            )
            return
        try:
            action = frames.ENVELOPE_DECODER.decode(raw).action
        except msgspec.ValidationError as exc:
            await connection.send(frames.error(ErrorCode.INVALID_MESSAGE, str(exc)))
            return
        except msgspec.DecodeError:
            await connection.send(frames.error(ErrorCode.INVALID_JSON, "frame is not valid JSON"))
            return
        try:
            if action == "ping":
                _PING_DECODER.decode(raw)
                await connection.send(frames.PONG)
            elif action == "auth":
                await self._reauthenticate(_AUTH_DECODER.decode(raw).token)
            else:
                await self._feature.handle(connection, self._feature.decode(action, raw))
        except msgspec.ValidationError as exc:
            await connection.send(frames.error(ErrorCode.INVALID_MESSAGE, str(exc)))
        except UnknownAction:
            what = f"unknown action {action!r}" if action is not None else "missing action"
            await connection.send(frames.error(ErrorCode.UNKNOWN_ACTION, what))

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    async def _reauthenticate(self, token: str) -> None:
        connection = self._connection
        try:
            user = await self._verifier.verify(token)
        except (InvalidToken, StoreUnavailable) as exc:
            logger.info("auth frame refused on connection %s: %s", connection.id, exc)
            await connection.send(frames.error(ErrorCode.UNAUTHORIZED, "token refused"))
            return
        if user.id != connection.user.id:
            await connection.send(frames.error(ErrorCode.UNAUTHORIZED, "token is for another user"))
            return
        connection.user = user
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        # A timer handle, not a task: an idle connection costs no scheduled work until then.
        self.stop()
        expires_at = self._connection.user.expires_at
        if expires_at is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry = loop.call_later(delay, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        task = asyncio.get_running_loop().create_task(
            self._connection.close(Rejection.TOKEN_EXPIRED)
        )
        _background.add(task)
        task.add_done_callback(_background.discard)


# Keeps the one-shot close tasks referenced until they finish (asyncio holds only weak refs).
_background: set[asyncio.Task[None]] = set()
