"""The Redis chat bus: a chat's frames and stop requests cross server processes over pub/sub,
and a key per chat says which turn runs in it.

One pub/sub connection and one reader task per process, whatever the number of chats or
sockets. Channel ``{prefix}chat:{chat_id}`` carries messages of the form ``origin|kind|body``:
``origin`` is the sending process (a process ignores its own), ``kind`` is ``F`` (a frame),
``S`` (stop the running turn) or ``J`` (a process joined: whoever runs the turn should publish
its frames again). Key ``{prefix}turn:{chat_id}`` holds the running turn's id, with a TTL so
that a turn whose process died does not keep its chat busy for ever.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.client import PubSub

from app.domain.errors import StoreUnavailable
from app.domain.ports import ChatBusListener

logger = logging.getLogger(__name__)

FRAME, STOP, JOIN = b"F", b"S", b"J"
RECONNECT_DELAY_MAX = 5.0

# Deletes the turn key only if it still names this turn (a late release must not free a
# chat that a newer turn, after the TTL, has claimed).
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisChatBus:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._origin = uuid.uuid4().hex.encode()
        self._listener: ChatBusListener | None = None
        self._channels: set[str] = set()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._release = redis.register_script(_RELEASE)
        self._own_channel = f"{prefix}process:{self._origin.decode()}"

    def attach(self, listener: ChatBusListener) -> None:
        self._listener = listener

    async def join(self, chat_id: str) -> None:
        channel = self._channel(chat_id)
        self._channels.add(channel)
        with _redis_errors():
            pubsub = await self._ensure_reader()
            await pubsub.subscribe(channel)
            await self._redis.publish(channel, self._message(JOIN))

    async def leave(self, chat_id: str) -> None:
        channel = self._channel(chat_id)
        self._channels.discard(channel)
        if self._pubsub is not None:
            with _redis_errors():
                await self._pubsub.unsubscribe(channel)

    async def publish(self, chat_id: str, frame: bytes) -> bool:
        with _redis_errors():
            receivers = await self._redis.publish(
                self._channel(chat_id), self._message(FRAME, frame)
            )
        # This process is subscribed too: anyone beyond it is another process.
        return int(receivers) > 1

    async def request_stop(self, chat_id: str) -> None:
        with _redis_errors():
            await self._redis.publish(self._channel(chat_id), self._message(STOP))

    async def claim_turn(self, chat_id: str, turn_id: str, ttl_seconds: float) -> bool:
        with _redis_errors():
            claimed = await self._redis.set(
                self._turn_key(chat_id), turn_id, nx=True, px=int(ttl_seconds * 1000)
            )
        return bool(claimed)

    async def release_turn(self, chat_id: str, turn_id: str) -> None:
        with _redis_errors():
            await self._release(keys=[self._turn_key(chat_id)], args=[turn_id])

    async def turn_running(self, chat_id: str) -> bool:
        with _redis_errors():
            return bool(await self._redis.exists(self._turn_key(chat_id)))

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._pubsub is not None:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None

    # -- receiving ------------------------------------------------------------------------------

    async def _ensure_reader(self) -> PubSub:
        # A channel of this process's own keeps the subscription, and so the reader, alive
        # while no chat is joined.
        pubsub = self._pubsub or await self._resubscribe()
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return pubsub

    async def _read(self) -> None:
        delay = 0.1
        while True:
            try:
                pubsub = self._pubsub or await self._resubscribe()
                async for message in pubsub.listen():
                    delay = 0.1
                    try:
                        await self._dispatch(message["channel"], message["data"])
                    except Exception:  # one bad message must not stop the chat bus
                        logger.exception("chat bus message could not be handled")
                # ``listen`` only ends when nothing is subscribed: the connection was reset.
                logger.warning("chat bus subscription ended; resubscribing")
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
                logger.warning("chat bus lost Redis (%s); reconnecting in %.1f s", exc, delay)
            await self._drop_pubsub()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _resubscribe(self) -> PubSub:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._own_channel, *self._channels)
        self._pubsub = pubsub
        return pubsub

    async def _drop_pubsub(self) -> None:
        old, self._pubsub = self._pubsub, None
        if old is not None:
            try:
                await old.aclose()  # type: ignore[no-untyped-call]
            except (redis_errors.RedisError, OSError):
                pass  # it is broken already; a new one replaces it

    async def _dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        if self._listener is None or not isinstance(data, bytes):
            return
        origin, _, rest = data.partition(b"|")
        kind, _, body = rest.partition(b"|")
        if origin == self._origin:
            return
        name = channel.decode() if isinstance(channel, bytes) else channel
        chat_id = name.removeprefix(f"{self._prefix}chat:")
        if kind == FRAME:
            await self._listener.on_remote_frame(chat_id, body)
        elif kind == STOP:
            self._listener.on_remote_stop(chat_id)
        elif kind == JOIN:
            self._listener.on_remote_join(chat_id)

    # -- names ------------------------------------------------------------------------------------

    def _message(self, kind: bytes, body: bytes = b"") -> bytes:
        return b"|".join((self._origin, kind, body))

    def _channel(self, chat_id: str) -> str:
        return f"{self._prefix}chat:{chat_id}"

    def _turn_key(self, chat_id: str) -> str:
        return f"{self._prefix}turn:{chat_id}"


@contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError) as exc:
        raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}") from exc
