"""Concurrent calls to a store, joined into one round trip.

When many sockets connect at once (a deploy's reconnect storm), each admission asks the
database to claim its chat and Redis to count its connection. A :class:`Batcher` runs every
call that arrives while the store is busy with earlier ones as one statement or pipeline: one
call alone costs what it did (it starts on the next turn of the event loop), and a burst costs
a few round trips instead of one per socket.

Written here because what the field offers does not fit: ``aiodataloader`` batches per loop
tick but has no bound on batches in flight (a burst would still be one statement per tick) and
caches results, which would hide another process's claim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

#: Calls joined into one round trip at most (a statement's parameters stay bounded).
MAX_BATCH = 256
#: Round trips one batcher keeps in flight; calls arriving meanwhile wait and form the next
#: batch. One: in the benchmark (2 cores shared with PostgreSQL and Redis) four in flight made
#: batches of two or three and cost the stores 50 % more CPU, for lower throughput and a worse
#: p99. A statement that hangs delays the calls behind it, so the adapters bound their round
#: trips (``app.infra.sql.lanes``: a statement timeout; Redis: the client's socket timeout).
MAX_IN_FLIGHT = 1


class Batcher(Generic[Item, Result]):
    """``await batcher.submit(item)`` runs ``run([..., item, ...])`` and returns item's result.

    ``run`` answers a list of results in the order of its items, or raises: then every call of
    that batch raises the same error. It is a coroutine function (each batch runs as a task of
    its own), or a function that starts the batch and returns an :class:`asyncio.Future` of its
    results (the batch is then answered from the future's callback, with no task). A caller
    that is cancelled leaves its item in the batch (the store still does it; nobody waits for
    the answer).

    ``submit(item, linger=s)`` is for calls nobody is held up by (a closed socket's release):
    the item rides along with the next batch that goes anyway, or goes after ``s`` seconds at
    the latest, so that it costs no round trip of its own while calls keep coming.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Item]], Awaitable[Sequence[Result]]],
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        # (item, its future, whether its caller waits on it now)
        self._pending: list[tuple[Item, asyncio.Future[Result], bool]] = []
        self._urgent = 0  # how many of the pending are urgent
        self._due = False  # the lingering items' time is up
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight = 0
        self._scheduled = False
        # The batches under way: their tasks (asyncio keeps only weak references to tasks), or
        # the futures of a run that answers with one.
        self._under_way: set[asyncio.Future[Any]] = set()

    async def submit(self, item: Item, *, linger: float = 0.0) -> Result:
        return await self.enqueue(item, linger=linger)

    def enqueue(self, item: Item, *, linger: float = 0.0) -> asyncio.Future[Result]:
        """:meth:`submit` without waiting: the item is in the next batch already, so that a
        caller may queue it before awaiting another call of the same batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        urgent = linger <= 0
        self._pending.append((item, future, urgent))
        if urgent:
            self._urgent += 1
        elif self._timer is None:
            self._timer = loop.call_later(linger, self._linger_over, loop)
        self._schedule(loop)
        return future

    def _linger_over(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        self._due = True
        self._schedule(loop)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # On the next turn of the loop, so that calls made in this one join the same batch.
        if (
            not self._scheduled
            and self._pending
            and (self._urgent or self._due)
            and self._in_flight < self._max_in_flight
        ):
            self._scheduled = True
            loop.call_soon(self._flush, loop)

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        self._urgent -= sum(1 for _, _, urgent in batch if urgent)
        if not self._pending:  # the lingering items, if any, went along
            self._due = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._in_flight += 1
        try:
            started = self._run([item for item, _, _ in batch])
        except Exception as error:  # a run that starts at once refused the batch
            failed: asyncio.Future[Sequence[Result]] = loop.create_future()
            failed.set_exception(error)
            started = failed
        if isinstance(started, asyncio.Future):
            # A run that answers with a future has its work under way already: no task per
            # batch. For the Redis batches on every connect's path, the task and its coroutine
            # layers were ~40 % of a round trip's instructions (bench/README.md, fifteenth
            # session).
            self._under_way.add(started)
            started.add_done_callback(partial(self._answered, batch))
        else:
            task = loop.create_task(self._complete(batch, started))
            self._under_way.add(task)
            task.add_done_callback(self._under_way.discard)
        self._schedule(loop)  # more than one batch waited

    async def _complete(
        self,
        batch: list[tuple[Item, asyncio.Future[Result], bool]],
        run: Awaitable[Sequence[Result]],
    ) -> None:
        try:
            results = await run
        except asyncio.CancelledError:  # shutting down: nobody gets an answer
            _cancel(batch)
            raise
        except Exception as error:
            _fail(batch, error)
        else:
            _answer(batch, results)
        finally:
            self._in_flight -= 1
            self._schedule(asyncio.get_running_loop())

    def _answered(
        self,
        batch: list[tuple[Item, asyncio.Future[Result], bool]],
        run: asyncio.Future[Sequence[Result]],
    ) -> None:
        self._under_way.discard(run)
        if run.cancelled():
            _cancel(batch)
        elif (error := run.exception()) is not None:
            _fail(batch, error)
        else:
            _answer(batch, run.result())
        self._in_flight -= 1
        self._schedule(asyncio.get_running_loop())

    async def aclose(self) -> None:
        """Send what lingers now and wait for every batch under way (their callers are owed
        an answer)."""
        loop = asyncio.get_running_loop()
        while self._under_way or self._pending:
            if self._pending:
                self._due = True
                self._schedule(loop)
            if self._under_way:
                await asyncio.gather(*self._under_way, return_exceptions=True)
                await asyncio.sleep(0)  # a future's own callback (its answer) runs first
            else:
                await asyncio.sleep(0)  # the flush scheduled above runs


def _answer(
    batch: Sequence[tuple[object, asyncio.Future[Any], bool]], results: Sequence[Any]
) -> None:
    for (_, future, _), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _fail(batch: Sequence[tuple[object, asyncio.Future[Any], bool]], error: BaseException) -> None:
    for _, future, _ in batch:
        if not future.done():
            future.set_exception(error)


def _cancel(batch: Sequence[tuple[object, asyncio.Future[Any], bool]]) -> None:
    for _, future, _ in batch:
        future.cancel()
