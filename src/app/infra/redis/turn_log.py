"""The Redis :class:`~app.domain.ports.TurnLog`: a stream per turn, its frames published on the
chat's channel right after they are logged (as Centrifugo's Redis broker does) while another
process listens to the chat, and the chat's latest turn record.

- ``{prefix}{chat:<id>}:log:<turn>``: a stream; each entry a batch of consecutive frames, with
  fields ``s`` (the first frame's position) and ``f`` (the frames, joined by newlines, which
  JSON frames never contain raw). The entry id is ``0-<last position + 1>``, so a batch written
  twice (a retry after a lost reply) is refused as a duplicate, and readers drop any overlap.
- ``{prefix}{chat:<id>}:turn``: the latest turn's record (JSON).
- channel ``{prefix}{chat:<id>}`` (sharded on a cluster):
  ``F<origin>@<sent ms>|<turn>|<first>\\n<frames>``, ``<sent ms>`` the publish time (Unix
  milliseconds), for the receivers' delivery lag. It rides on the origin field, which readers
  before it ignored, so that processes of either version read each other's frames.

Nothing waits for Redis on the way: appends are queued and written together every
:data:`FLUSH_DELAY` (one pipeline: records, then per turn one XADD and one PUBLISH, or a PUBSUB
NUMSUB instead while nobody else listens; the stream's PEXPIRE with the first batch this process
writes). While Redis is away the queue is kept and written when it is back; frames of the turns
still running here are kept until they ended and are written, so that a log Redis lost in a
restart is written again whole. Both are bounded (:data:`MAX_RETAINED_BYTES`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import msgspec
from redis import exceptions as redis_errors

from app.domain.chats import TurnRecord, TurnState
from app.domain.errors import StoreUnavailable
from app.domain.turn_log import LogSlice
from app.infra.batching import Batcher
from app.infra.redis.client import AnyRedis
from app.infra.redis.errors import UNAVAILABLE, redis_errors_as_unavailable
from app.infra.redis.keys import RedisKeys
from app.infra.redis.metrics import NO_BUS_METRICS, BusMetrics

logger = logging.getLogger(__name__)

FLUSH_DELAY = 0.002
#: Frames queued past this are written at once rather than after the delay.
FLUSH_NOW_FRAMES = 256
RETRY_DELAY_MAX = 2.0
MAX_RETAINED_BYTES = 64 << 20
FRAME = b"F"
STOP = b"S"
_DUPLICATE = "equal or smaller"

_encode_record = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(TurnRecord).decode


@dataclass
class _Retained:
    """One turn's frames as this process logged them (positions from 0)."""

    frames: list[bytes] = field(default_factory=list)
    #: How many of them Redis is known to hold.
    written: int = 0
    #: Whether this process has given the stream its live TTL (with its first write here).
    expires: bool = False
    #: Whether another process listens on the chat's channel, as the last write's PUBLISH or
    #: PUBSUB NUMSUB counted (None: not known, so published).
    others: bool | None = None
    #: Whether a batch of this turn went unpublished (nobody else listened).
    skipped: bool = False
    record: TurnRecord | None = None
    ended: bool = False
    size: int = 0


class RedisTurnLog:
    def __init__(
        self,
        redis: AnyRedis,
        keys: RedisKeys,
        *,
        origin: bytes,
        ttl: float,
        live_ttl: float,
        cluster: bool = False,
        metrics: BusMetrics = NO_BUS_METRICS,
        listening: Callable[[str], bool] | None = None,
    ) -> None:
        """``listening(chat_id)``: whether Redis counts this process among the subscribers of
        the chat's channel (:meth:`RedisChannels.listens`); with it, a turn's batches are
        published only while another process listens (not on a cluster: see ``_write``)."""
        self._redis = redis
        self._listening = None if cluster else listening
        self._metrics = metrics
        self._keys = keys
        self._origin = origin
        self._ttl_ms = int(ttl * 1000)
        self._live_ttl_ms = int(live_ttl * 1000)
        self._publish = "SPUBLISH" if cluster else "PUBLISH"
        self._turns: dict[tuple[str, str], _Retained] = {}
        # What to write, in order: a record (with its TTL), or a turn whose frames to write.
        self._queue: deque[TurnRecord | tuple[str, str]] = deque()
        self._queued_turns: set[tuple[str, str]] = set()
        self._retained = 0
        self._flusher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._lost_contact = False
        self._closed = False
        self._records: Batcher[str, bytes | None] = Batcher(self._read_records)

    # -- writing (never waits) ---------------------------------------------------------------

    def start(self, record: TurnRecord) -> None:
        self._turns.setdefault((record.chat_id, record.turn_id), _Retained()).record = record
        self._queue.append(record)
        self._kick()

    def append(self, chat_id: str, turn_id: str, seq: int, frame: bytes) -> None:
        key = (chat_id, turn_id)
        retained = self._turns.get(key)
        if retained is None:
            # A frame of a turn logged elsewhere (a finaliser's end): continue its log.
            retained = self._turns[key] = _Retained(frames=[], written=seq)
            retained.frames = [b""] * seq  # placeholders: those positions are in Redis already
        if seq != len(retained.frames):
            return  # a position already logged
        retained.frames.append(frame)
        retained.size += len(frame)
        self._retained += len(frame)
        if key not in self._queued_turns:
            self._queued_turns.add(key)
            self._queue.append(key)
        self._kick()

    def end(self, record: TurnRecord) -> None:
        retained = self._turns.get((record.chat_id, record.turn_id))
        if retained is not None:
            retained.record, retained.ended = record, True
        self._queue.append(record)
        self._kick()

    async def flush(self) -> None:
        if self._closed or (not self._queue and self._flusher is None):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._kick(now=True)
        await waiter

    # -- reading -----------------------------------------------------------------------------

    async def read(self, chat_id: str, turn_id: str, after_seq: int) -> LogSlice | None:
        key = self._keys.log(chat_id, turn_id)
        start = f"(0-{after_seq + 1}" if after_seq >= 0 else "-"
        with redis_errors_as_unavailable():
            entries = await self._redis.xrange(key, min=start, max="+")
            if not entries:
                last = await self._redis.xrevrange(key, max="+", min="-", count=1)
                if not last:
                    return None
                return LogSlice(first_seq=_entry_end(last[0][0]), frames=[])  # type: ignore[arg-type]
        frames: list[bytes] = []
        first: int | None = None
        for _, fields in entries:
            assert fields is not None
            batch_start = int(fields[b"s"])
            payload = fields[b"f"]
            assert isinstance(payload, bytes)
            for offset, frame in enumerate(payload.split(b"\n")):
                seq = batch_start + offset
                if seq <= after_seq:
                    continue
                if first is None:
                    first = seq
                expected = first + len(frames)
                if seq < expected:
                    continue  # the overlap of a batch written again
                if seq > expected:
                    return LogSlice(first_seq=first, frames=frames)  # a hole: stop before it
                frames.append(frame)
        return LogSlice(first_seq=first if first is not None else after_seq + 1, frames=frames)

    async def current(self, chat_id: str) -> TurnRecord | None:
        raw = await self._records.submit(chat_id)
        return None if raw is None else _decode_record(raw)

    async def _read_records(self, chat_ids: Sequence[str]) -> list[bytes | None]:
        """Every turn starts by reading its chat's record: those of concurrent turns go in one
        pipeline of GETs (not an MGET: on a cluster the chats' keys are in different slots)."""
        with redis_errors_as_unavailable():
            async with self._redis.pipeline(transaction=False) as pipe:
                for chat_id in chat_ids:
                    pipe.get(self._keys.record(chat_id))
                return list(await pipe.execute())

    # -- the writer --------------------------------------------------------------------------

    def _kick(self, now: bool = False) -> None:
        if self._flusher is not None or self._closed:
            return
        if now or len(self._queue) >= FLUSH_NOW_FRAMES:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._flusher = asyncio.get_running_loop().create_task(self._flush_all())
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_DELAY, self._kick_now)

    def _kick_now(self) -> None:
        self._timer = None
        self._kick(now=True)

    async def _flush_all(self) -> None:
        delay = 0.1
        try:
            while self._queue:
                try:
                    if self._lost_contact:
                        await self._rewrite_lost_logs()
                    await self._write(self._take_batch())
                    if self._lost_contact:
                        logger.info("turn log: Redis is back, what waited is written")
                    self._lost_contact = False
                    delay = 0.1
                except Exception as exc:  # unreachable, or refusing: keep the frames, retry
                    self._metrics.publish_failed()
                    if not self._lost_contact:
                        logger.error("turn log: writing failed (%r); keeping frames", exc)
                    self._lost_contact = True
                    self._reject_waiters(exc)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_DELAY_MAX)
            self._resolve_waiters()
        finally:
            self._flusher = None
            if self._queue:
                self._kick()

    def _take_batch(self) -> list[TurnRecord | tuple[str, str, int, int]]:
        """What the queue asks to write now; frames as (chat, turn, from, to) ranges."""
        ops: list[TurnRecord | tuple[str, str, int, int]] = []
        while self._queue:
            item = self._queue.popleft()
            if isinstance(item, TurnRecord):
                ops.append(item)
                continue
            self._queued_turns.discard(item)
            retained = self._turns.get(item)
            if retained is not None and retained.written < len(retained.frames):
                ops.append((item[0], item[1], retained.written, len(retained.frames)))
        return ops

    async def _write(self, ops: list[TurnRecord | tuple[str, str, int, int]]) -> None:
        keys = self._keys
        sent = b"%s@%d" % (self._origin, time.time() * 1000)
        listening = self._listening
        # (position in the pipeline's replies, turn, chat) of each PUBLISH or NUMSUB sent.
        counts: list[tuple[int, _Retained, str]] = []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for op in ops:
                    if isinstance(op, TurnRecord):
                        ttl = self._ttl_ms if op.state is TurnState.ENDED else self._live_ttl_ms
                        pipe.set(keys.record(op.chat_id), _encode_record(op), px=ttl)
                        if op.state is TurnState.ENDED:
                            pipe.pexpire(keys.log(op.chat_id, op.turn_id), self._ttl_ms)
                            ended = self._turns.get((op.chat_id, op.turn_id))
                            if ended is not None and ended.skipped and ended.frames:
                                # A batch went unpublished: the last frame is published again,
                                # so that a process that began listening since (and so heard
                                # of a gap, or of nothing) reads the rest from the log.
                                last = len(ended.frames) - 1
                                pipe.execute_command(
                                    self._publish,
                                    keys.channel(op.chat_id),
                                    _message(sent, op.turn_id, last, ended.frames[last]),
                                )
                        continue
                    chat_id, turn_id, start, stop = op
                    written_here = self._turns[(chat_id, turn_id)]
                    frames = written_here.frames[start:stop]
                    payload = b"\n".join(frames)
                    log_key = keys.log(chat_id, turn_id)
                    pipe.xadd(log_key, {b"s": str(start), b"f": payload}, id=f"0-{stop}")
                    if not written_here.expires:
                        # Once per stream this process writes (again after Redis lost it):
                        # the live TTL outlasts any turn (turn timeout + retry + log TTL), and
                        # the end sets the final one. A PEXPIRE per batch was a third of the
                        # commands of a streaming turn.
                        pipe.pexpire(log_key, self._live_ttl_ms)
                    channel = keys.channel(chat_id)
                    # Every batch is published while another process listens or while that
                    # is not known; a batch nobody else hears is not (it came back to this
                    # process's own subscriber, to be dropped: 8 % of a streaming process's
                    # CPU). Each batch brings back the channel's subscribers as Redis counts
                    # them after logging it: PUBLISH's reply, or PUBSUB NUMSUB's when it is
                    # not published. A process that subscribes meanwhile is counted with the
                    # next batch and gets every batch after it; what it missed is a gap, which
                    # it reads from the log (as after a lost message).
                    if listening is not None:
                        counts.append((len(pipe), written_here, chat_id))
                    if listening is None or written_here.others is not False:
                        pipe.execute_command(
                            self._publish, channel, _message(sent, turn_id, start, payload)
                        )
                    else:
                        written_here.skipped = True
                        pipe.execute_command("PUBSUB", "NUMSUB", channel)
                results = await pipe.execute(raise_on_error=False)
        except BaseException:
            self._requeue(ops)
            raise
        for result in results:
            if isinstance(result, UNAVAILABLE):
                self._requeue(ops)
                raise result
            if isinstance(result, redis_errors.ResponseError) and _DUPLICATE not in str(result):
                logger.error("turn log: Redis refused a write: %s", result)
        for index, counted, chat_id in counts:
            counted.others = _others(results[index], bool(listening and listening(chat_id)))
        for op in ops:
            if isinstance(op, TurnRecord):
                self._forget_if_done((op.chat_id, op.turn_id))
            else:
                chat_id, turn_id, _, stop = op
                retained = self._turns.get((chat_id, turn_id))
                if retained is not None:
                    retained.written = max(retained.written, stop)
                    retained.expires = True
                    self._forget_if_done((chat_id, turn_id))

    def _requeue(self, ops: list[TurnRecord | tuple[str, str, int, int]]) -> None:
        """Put what failed back in front of the queue, in its order."""
        for op in reversed(ops):
            if isinstance(op, TurnRecord):
                self._queue.appendleft(op)
            else:
                key = (op[0], op[1])
                if key not in self._queued_turns:
                    self._queued_turns.add(key)
                    self._queue.appendleft(key)
        self._bound_retention()

    async def _rewrite_lost_logs(self) -> None:
        """After an outage: a turn log Redis no longer has (it restarted) is written again from
        what this process kept, with its record."""
        written = [(key, r) for key, r in self._turns.items() if r.written > 0 and r.frames[0]]
        if not written:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for (chat_id, turn_id), _ in written:
                pipe.exists(self._keys.log(chat_id, turn_id))
            present = await pipe.execute()
        for ((chat_id, turn_id), retained), exists in zip(written, present, strict=True):
            if exists:
                continue
            logger.warning("turn log of %s lost by Redis: writing it again", turn_id)
            retained.written, retained.expires = 0, False
            if retained.record is not None:
                self._queue.appendleft(retained.record)
            if (chat_id, turn_id) not in self._queued_turns:
                self._queued_turns.add((chat_id, turn_id))
                self._queue.append((chat_id, turn_id))

    def _forget_if_done(self, key: tuple[str, str]) -> None:
        retained = self._turns.get(key)
        if retained is not None and retained.ended and retained.written >= len(retained.frames):
            if key not in self._queued_turns:
                self._retained -= retained.size
                del self._turns[key]

    def _bound_retention(self) -> None:
        """Past the bound, the oldest ended turns' frames are dropped (their logs stay short:
        readers get ``resume_unavailable`` for what is missing)."""
        if self._retained <= MAX_RETAINED_BYTES:
            return
        for key, retained in list(self._turns.items()):
            if self._retained <= MAX_RETAINED_BYTES:
                break
            if retained.ended:
                logger.error("turn log: dropping unwritten frames of turn %s", key[1])
                self._retained -= retained.size
                del self._turns[key]
                self._queued_turns.discard(key)

    def _resolve_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _reject_waiters(self, exc: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(StoreUnavailable(f"redis unavailable: {type(exc).__name__}"))

    async def aclose(self) -> None:
        # Closed, the writer is not started again (what is left stays unwritten).
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)


def _message(sent: bytes, turn_id: str, first: int, payload: bytes) -> bytes:
    """A chat channel's frames message: ``F<origin>@<sent ms>|<turn>|<first>\\n<frames>``."""
    return b"%s%s|%s|%d\n%s" % (FRAME, sent, turn_id.encode(), first, payload)


def _others(reply: object, counted_in: bool) -> bool | None:
    """From a PUBLISH reply (the subscribers that got it) or a PUBSUB NUMSUB reply
    (``[channel, subscribers]``): whether a subscriber other than this process listens; None
    if the reply is an error (then published, to be safe)."""
    subscribers = reply[1] if isinstance(reply, list) and len(reply) == 2 else reply
    if not isinstance(subscribers, int):
        return None
    return subscribers > (1 if counted_in else 0)


def _entry_end(entry_id: bytes | str) -> int:
    """The position after the last frame of the entry ``0-<last + 1>``."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(text.split("-", 1)[1])
