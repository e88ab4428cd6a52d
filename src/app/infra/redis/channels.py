"""The Redis :class:`~app.domain.ports.ChatFanOut` and :class:`~app.domain.ports.TurnControl`:
one pub/sub connection and one reader task per process (per node on a Redis Cluster, with
sharded pub/sub), whatever the number of chats or sockets.

A chat's channel ``{prefix}{chat:<id>}`` carries
``F<origin>@<sent ms>|<turn>|<first seq>\\n<frames>`` (published by
:class:`~app.infra.redis.turn_log.RedisTurnLog` after logging them; a header without
``@<sent ms>``, from a process before it, is read the same, without a lag) and
``S<origin>`` (stop the running turn). A process ignores what it sent itself. When the
connection drops, the reader reconnects with backoff, subscribes again and tells the listener
to resynchronise from the turn logs (what was published meanwhile is lost to pub/sub).

On a cluster, redis-py's ``ClusterPubSub`` reads shard channels by polling each node in turn
with a timeout (``get_sharded_message``); flowgate instead keeps a plain pub/sub connection to
each node that owns one of its channels and waits on each (no polling, no timeouts).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Sequence

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import RedisCluster

from app.domain.ports import ControlListener, FanOutListener
from app.infra.batching import Batcher
from app.infra.redis.client import AnyRedis
from app.infra.redis.errors import UNAVAILABLE, redis_errors_as_unavailable
from app.infra.redis.keys import RedisKeys
from app.infra.redis.metrics import NO_BUS_METRICS, BusMetrics
from app.infra.redis.turn_log import FRAME, STOP

logger = logging.getLogger(__name__)

RECONNECT_DELAY_MAX = 2.0


class RedisChannels:
    def __init__(
        self,
        redis: AnyRedis,
        keys: RedisKeys,
        *,
        origin: bytes,
        metrics: BusMetrics = NO_BUS_METRICS,
    ) -> None:
        self._redis = redis
        self._metrics = metrics
        self._keys = keys
        self._origin = origin
        self._cluster = isinstance(redis, RedisCluster)
        self._listener: FanOutListener | None = None
        self._control: ControlListener | None = None
        self._channels: set[str] = set()
        #: Channels whose subscription Redis has confirmed and that were not left since: what
        #: :meth:`listens` answers (the turn log counts this process out of PUBSUB NUMSUB).
        self._confirmed: set[str] = set()
        # One subscriber per node ("" for a single server): its pub/sub and its reader.
        self._subscribers: dict[str, _Subscriber] = {}

    def attach(self, listener: FanOutListener | ControlListener) -> None:
        if hasattr(listener, "on_frames"):
            self._listener = listener  # type: ignore[assignment]
        if hasattr(listener, "on_stop"):
            self._control = listener  # type: ignore[assignment]

    async def join(self, chat_id: str) -> None:
        channel = self._keys.channel(chat_id)
        self._channels.add(channel)
        with redis_errors_as_unavailable():
            subscriber = await self._subscriber_of(channel)
            await subscriber.subscribe(channel)

    def listens(self, chat_id: str) -> bool:
        """Whether Redis counts this process among the chat channel's subscribers: confirmed
        by Redis, not left since (on leaving it stops counting before UNSUBSCRIBE is sent, so
        that it is never counted out while Redis still counts it in, nor the other way)."""
        return self._keys.channel(chat_id) in self._confirmed

    def subscription_confirmed(self, channel: bytes | str) -> None:
        name = _name(channel)
        if name in self._channels:  # not left meanwhile
            self._confirmed.add(name)

    def subscriptions_lost(self, channels: set[str]) -> None:
        self._confirmed.difference_update(channels)

    async def leave(self, chat_id: str) -> None:
        channel = self._keys.channel(chat_id)
        self._channels.discard(channel)
        self._confirmed.discard(channel)
        for subscriber in self._subscribers.values():
            if channel in subscriber.channels:
                with redis_errors_as_unavailable():
                    await subscriber.unsubscribe(channel)

    async def request_stop(self, chat_id: str) -> None:
        command = "SPUBLISH" if self._cluster else "PUBLISH"
        with redis_errors_as_unavailable():
            await self._redis.execute_command(
                command, self._keys.channel(chat_id), STOP + self._origin
            )

    async def aclose(self) -> None:
        for subscriber in self._subscribers.values():
            await subscriber.aclose()
        self._subscribers.clear()

    # -- receiving ---------------------------------------------------------------------------

    async def _subscriber_of(self, channel: str) -> _Subscriber:
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # the slot map, once (it does nothing after)
            node = self._redis.get_node_from_key(channel)
            if node is None:
                raise ConnectionError(f"no cluster node serves {channel}")
            name = node.name
            if name not in self._subscribers:
                client = Redis(host=node.host, port=int(node.port), socket_connect_timeout=2.0)
                self._subscribers[name] = _Subscriber(self, client, sharded=True, owned=True)
        else:
            name = ""
            if name not in self._subscribers:
                client = _without_health_checks(self._redis)
                self._subscribers[name] = _Subscriber(self, client, sharded=False, owned=True)
        return self._subscribers[name]

    def handle(self, channel: bytes | str, data: bytes | str) -> None:
        if not isinstance(data, bytes):
            return
        kind, body = data[:1], data[1:]
        if body.startswith(self._origin):
            return  # this process's own
        chat_id = self._keys.chat_of(_name(channel))
        if kind == FRAME and self._listener is not None:
            header, _, payload = body.partition(b"\n")
            sender, turn_id, first = header.split(b"|", 3)[:3]
            sent = sender.partition(b"@")[2]
            if sent.isdigit():
                self._metrics.delivered(time.time() - int(sent) / 1000)
            self._listener.on_frames(chat_id, turn_id.decode(), int(first), payload.split(b"\n"))
        elif kind == STOP and self._control is not None:
            self._control.on_stop(chat_id)

    def resynced(self) -> None:
        if self._listener is not None:
            self._listener.on_resync()


def _name(channel: bytes | str) -> str:
    return channel.decode() if isinstance(channel, bytes) else channel


def _without_health_checks(redis: Redis) -> Redis:
    """A client of the same server for the pub/sub connection, without redis-py's health check.

    With one, redis-py PINGs and reads the answer itself before a SUBSCRIBE sent while no
    channel is subscribed (every chat left, then one joined), on the connection the reader is
    waiting on: ``readuntil() called while another coroutine is already waiting``, and the
    joining socket was closed 1011. The reader notices a dead connection by itself.
    """
    pool = redis.connection_pool
    options = dict(pool.connection_kwargs, health_check_interval=0)
    return Redis(connection_pool=ConnectionPool(connection_class=pool.connection_class, **options))


class _Subscriber:
    """One pub/sub connection and the task that reads it, reconnecting after a failure."""

    def __init__(self, owner: RedisChannels, redis: Redis, *, sharded: bool, owned: bool) -> None:
        self._owner = owner
        self._redis = redis
        self._sharded = sharded
        self._owned = owned
        self.channels: set[str] = set()
        self._pubsub: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        # (subscribe?, channel), in the order asked: the chats that open and close at once
        # (a reconnect storm) change in one command each way. One batch at a time, so that a
        # chat left and joined again is never subscribed before it is unsubscribed.
        self._changes: Batcher[tuple[bool, str], None] = Batcher(self._apply, max_in_flight=1)

    async def subscribe(self, channel: str) -> None:
        self.channels.add(channel)
        await self._changes.submit((True, channel))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read())

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        if self._pubsub is not None:
            await self._changes.submit((False, channel))

    async def _apply(self, changes: Sequence[tuple[bool, str]]) -> list[None]:
        pubsub = self._pubsub or await self._connect()
        if self._sharded:  # one command names channels of one hash slot only: each its own
            for subscribe, channel in changes:
                await (pubsub.ssubscribe if subscribe else pubsub.sunsubscribe)(channel)
            return [None] * len(changes)
        for subscribe, group in itertools.groupby(changes, key=lambda change: change[0]):
            channels = [channel for _, channel in group]
            await (pubsub.subscribe if subscribe else pubsub.unsubscribe)(*channels)
        return [None] * len(changes)

    async def _connect(self) -> PubSub:
        # Subscribe confirmations are read too: they tell RedisChannels.listens.
        pubsub = self._redis.pubsub(ignore_subscribe_messages=False)
        if self.channels:
            if self._sharded:
                # One SSUBSCRIBE names channels of one hash slot only (chats hash apart).
                for channel in list(self.channels):
                    await pubsub.ssubscribe(channel)
            else:
                await pubsub.subscribe(*self.channels)
        self._pubsub = pubsub
        return pubsub

    async def _messages(self, pubsub: PubSub) -> AsyncIterator[dict[str, object]]:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=False, timeout=None)
            if message is not None:
                yield message

    async def _read(self) -> None:
        delay = 0.1
        reconnected = False
        while True:
            try:
                pubsub = self._pubsub or await self._connect()
                if reconnected:
                    logger.info("chat fan-out: reconnected to Redis; resynchronising")
                    self._owner.resynced()
                    reconnected = False
                async for message in self._messages(pubsub):
                    delay = 0.1
                    kind = message.get("type")
                    if kind in ("subscribe", "ssubscribe"):
                        self._owner.subscription_confirmed(message["channel"])  # type: ignore[arg-type]
                        continue
                    if kind not in ("message", "smessage"):
                        continue
                    try:
                        self._owner.handle(message["channel"], message["data"])  # type: ignore[arg-type]
                    except Exception:  # one bad message must not stop the fan-out
                        logger.exception("chat fan-out message could not be handled")
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                logger.warning("chat fan-out lost Redis (%s); reconnecting in %.1f s", exc, delay)
            except Exception:
                logger.exception("chat fan-out reader failed; reconnecting")
            await self._drop()
            reconnected = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _drop(self) -> None:
        self._owner.subscriptions_lost(self.channels)  # confirmed again as it subscribes anew
        old, self._pubsub = self._pubsub, None
        if old is not None:
            try:
                await old.aclose()  # type: ignore[no-untyped-call]
            except Exception:  # it is broken already; a new one replaces it
                pass

    async def aclose(self) -> None:
        await self._changes.aclose()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        await self._drop()
        if self._owned:
            await self._redis.aclose()
