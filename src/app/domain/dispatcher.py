"""What happens to each frame a connection receives (PROTOCOL.md §4).

The API layer calls :meth:`FrameDispatcher.dispatch` once per received frame. Frames that every
feature understands (``ping``, ``auth``) are answered here; the rest go to the connection's
feature. A frame that cannot be served gets an ``error`` frame and the connection stays open.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable
from typing import ClassVar

import msgspec

from app.domain import frames
from app.domain.connection import Connection
from app.domain.errors import InvalidToken, StoreUnavailable
from app.domain.features.base import Feature, UnknownAction
from app.domain.frames import ErrorCode
from app.domain.metrics import Limit
from app.domain.ports import TokenVerifier
from app.domain.rejections import Rejection

logger = logging.getLogger(__name__)

_PING_DECODER = msgspec.json.Decoder(frames.PingRequest)
_AUTH_DECODER = msgspec.json.Decoder(frames.AuthRequest)


#: A socket refused more than this many times its burst (beyond the rate) is closed (below).
FLOOD_FACTOR = 2.0


class FrameDispatcher:
    """Per connection: size and rate limits, decode, route, and the token's expiry timer.

    The rate limit is a token bucket, exact: ``rate`` frames a second, bursts of up to
    ``burst`` (= ``max(rate, 1)``) frames, so over any t seconds at most ``burst + rate × t``
    frames are served. A frame is served only if a whole token is there; every other frame is
    answered ``rate_limited`` with the time until the next token (rounded up to the
    millisecond, never 0). The refusals are a second bucket of the same rate and
    ``FLOOD_FACTOR × burst`` tokens: a socket refused more than ``FLOOD_FACTOR × burst +
    rate × t`` frames over t seconds is closed with 1008 ``rate limit exceeded``. So a flood
    costs at most that many error frames, and then the socket.

    Its state lives in the dispatcher's own slots and the expiry is an entry of the loop's
    shared :class:`_ExpiryTimers`, not a timer handle per connection: an idle connection is
    kept in memory for as long as it is open, so every object it holds counts.
    """

    __slots__ = (
        "_allowance",
        "_capacity",
        "_checked",
        "_clock",
        "_connection",
        "_expiry",
        "_feature",
        "_max_size",
        "_rate",
        "_strikes",
        "_struck",
        "_timers",
        "_verifier",
    )

    def __init__(
        self,
        connection: Connection,
        feature: Feature,
        verifier: TokenVerifier,
        messages_per_second: float,
        *,
        max_message_size: int = sys.maxsize,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._max_size = max_message_size
        self._feature = feature
        self._verifier = verifier
        self._rate = messages_per_second
        self._capacity = max(messages_per_second, 1.0)
        self._allowance = self._capacity
        self._strikes = FLOOD_FACTOR * self._capacity
        self._clock = clock
        self._checked = self._struck = clock()
        self._expiry: _Entry | None = None
        self._timers: _ExpiryTimers
        self._arm_expiry()

    def retry_after(self) -> float:
        """0 if a frame may pass now (and count it), else the seconds until one may (> 0).

        A refused frame counts against the flood allowance; once that is spent, -1.
        """
        # Every frame passes here: comparisons rather than min()/max() calls, and the refusals'
        # bucket is refilled only when a frame is refused (capping is the same whether the
        # refills are added one by one or at once, so the result is exactly the same).
        now = self._clock()
        elapsed = now - self._checked
        if elapsed < 0.0:
            elapsed = 0.0
        self._checked = now
        allowance = self._allowance + elapsed * self._rate
        if allowance > self._capacity:
            allowance = self._capacity
        if allowance >= 1.0:
            self._allowance = allowance - 1.0
            return 0.0
        self._allowance = allowance
        elapsed = now - self._struck
        if elapsed < 0.0:
            elapsed = 0.0
        self._struck = now
        strikes = min(FLOOD_FACTOR * self._capacity, self._strikes + elapsed * self._rate)
        if strikes < 1.0:
            self._strikes = strikes
            return -1.0
        self._strikes = strikes - 1.0
        # Rounded up, never 0: 0 means "served", and a wait rounded down to 0 (under half a
        # millisecond) once let frames through without spending a token (issue 9: 154 frames
        # answered in 3 s at 20/s). A client that waits exactly this long is served.
        return max(0.001, math.ceil((1.0 - self._allowance) / self._rate * 1000) / 1000)

    async def dispatch(self, raw: bytes | str) -> None:
        """Serve one received frame (the socket layer's call per frame: it awaits nothing else
        on the way, each coroutine layer costs every frame)."""
        connection = self._connection
        if len(raw) > self._max_size:
            connection.metrics.limit_reached(Limit.MESSAGE_SIZE)
            await connection.close(Rejection.MESSAGE_TOO_BIG)
            return
        retry_after = self.retry_after()
        if retry_after < 0:
            logger.info("connection %s closed: it kept flooding past its rate", connection.id)
            connection.metrics.limit_reached(Limit.RATE)
            await connection.close(Rejection.RATE_LIMIT_EXCEEDED)
            return
        if retry_after:
            connection.metrics.limit_reached(Limit.RATE)
            await connection.send(
                frames.error(ErrorCode.RATE_LIMITED, "too many messages", retry_after)
            )
            return
        try:
            # Before any decoder sees it: msgspec would recurse as deep as the frame nests.
            frames.check_depth(raw)
        except frames.TooDeep as exc:
            await connection.send(_invalid_message(exc))
            return
        decoder = self._feature.known_action_decoder
        try:
            request = decoder.decode(raw) if decoder is not None else None
        except msgspec.MsgspecError:
            request = None
        if request is None:  # no action (the chat's message), or to be refused
            await self._dispatch_the_long_way(raw)
            return
        try:
            kind = type(request)
            if kind is frames.PingFrame:
                await connection.send(frames.PONG)
            elif kind is frames.AuthFrame:
                await self._reauthenticate(request.token)
            else:
                await self._feature.handle(connection, request)
        except (msgspec.ValidationError, UnknownAction) as exc:  # raised by the handler
            await connection.send(_refusal(exc, type(request).__struct_config__.tag))

    async def _dispatch_the_long_way(self, raw: bytes | str) -> None:
        """A frame that :attr:`Feature.known_action_decoder` did not take: one without
        ``action`` (the chat's message), or one to refuse. The envelope first, then the
        action's type: each error is named as precisely as one of the two decoders can."""
        connection = self._connection
        try:
            action = frames.ENVELOPE_DECODER.decode(raw).action
        except msgspec.ValidationError as exc:
            await connection.send(_invalid_message(exc))
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
        except (msgspec.ValidationError, UnknownAction) as exc:
            await connection.send(_refusal(exc, action))

    def stop(self) -> None:
        if self._expiry is not None:
            self._expiry = None
            self._timers.cancel()

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
        self.stop()
        expires_at = self._connection.user.expires_at
        if expires_at is None:
            return
        delay = max(0.0, expires_at - time.time())
        self._timers = _ExpiryTimers.of_running_loop()
        self._expiry = self._timers.add(delay, self)

    def _expire(self) -> None:
        self._expiry = None
        task = asyncio.get_running_loop().create_task(
            self._connection.close(Rejection.TOKEN_EXPIRED)
        )
        _background.add(task)
        task.add_done_callback(_background.discard)


def _refusal(exc: Exception, action: str | None) -> bytes:
    """The error frame for a request that failed its type or named no action served here."""
    if isinstance(exc, UnknownAction):
        what = f"unknown action {action!r}" if action is not None else "missing action"
        return frames.error(ErrorCode.UNKNOWN_ACTION, what)
    return _invalid_message(exc)


def _invalid_message(exc: Exception) -> bytes:
    """``invalid_message`` naming the JSON path; msgspec names none for the frame itself."""
    message = str(exc)
    if " - at `$" not in message:
        message += " - at `$`"
    return frames.error(ErrorCode.INVALID_MESSAGE, message)


# (loop time when due, sequence number, dispatcher): by time, then in the order added.
_Entry = tuple[float, int, FrameDispatcher]


class _ExpiryTimers:
    """The token expiries of one event loop's connections: a heap and one loop timer.

    The timer is set for the earliest entry. A cancelled entry stays in the heap (a dispatcher
    knows its live entry by identity) until it is due or until cancelled entries outnumber the
    live ones, when the heap is rebuilt without them, so closed connections are not kept.
    """

    __slots__ = ("__weakref__", "_cancelled", "_due", "_heap", "_sequence", "_timer")

    _of_loop: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ExpiryTimers]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self) -> None:
        # No reference to the loop (each method asks for the running one, its own): the weak
        # dictionary's entry would otherwise keep its own key alive, and every loop with it.
        self._heap: list[_Entry] = []
        self._cancelled = 0
        self._timer: asyncio.TimerHandle | None = None
        self._due = math.inf
        self._sequence = itertools.count()

    @classmethod
    def of_running_loop(cls) -> _ExpiryTimers:
        loop = asyncio.get_running_loop()
        timers = cls._of_loop.get(loop)
        if timers is None:
            timers = cls._of_loop[loop] = cls()
        return timers

    def add(self, delay: float, dispatcher: FrameDispatcher) -> _Entry:
        entry = (asyncio.get_running_loop().time() + delay, next(self._sequence), dispatcher)
        heapq.heappush(self._heap, entry)
        if entry[0] < self._due:
            self._set_timer(entry[0])
        return entry

    def cancel(self) -> None:
        """One entry cancelled: it stays in the heap, but its dispatcher no longer points at it."""
        self._cancelled += 1
        heap = self._heap
        if self._cancelled == len(heap) or (
            self._cancelled > 32 and 2 * self._cancelled > len(heap)
        ):
            heap[:] = [e for e in heap if e[2]._expiry is e]
            heapq.heapify(heap)
            self._cancelled = 0
            if not heap and self._timer is not None:
                self._timer.cancel()
                self._timer, self._due = None, math.inf

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._due = when
        self._timer = asyncio.get_running_loop().call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._due = None, math.inf
        heap = self._heap
        # A loop timer may run a little before its time: what is due within 1 ms goes now.
        now = asyncio.get_running_loop().time() + 0.001
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            dispatcher = entry[2]
            if dispatcher._expiry is entry:
                dispatcher._expire()
            elif self._cancelled:
                self._cancelled -= 1
        if heap:
            self._set_timer(heap[0][0])


# Keeps the one-shot close tasks referenced until they finish (asyncio holds only weak refs).
_background: set[asyncio.Task[None]] = set()
