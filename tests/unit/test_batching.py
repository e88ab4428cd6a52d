"""The batcher that joins concurrent store calls (app.infra.batching)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from app.infra.batching import Batcher


class Store:
    """Answers each item doubled; records every batch; can be held or made to fail.

    ``runner`` is what the batcher is given: the coroutine function itself, or (``kind``
    "future") a function that starts the batch and answers with its future, the form the Redis
    batches use (no task per batch in the batcher)."""

    kind = "coroutine"

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: Exception | None = None

    async def run(self, items: Sequence[int]) -> list[int]:
        self.batches.append(list(items))
        await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        return [item * 2 for item in items]

    @property
    def runner(self) -> Any:
        if self.kind == "coroutine":
            return self.run
        return lambda items: asyncio.ensure_future(self.run(items))


@pytest.fixture(autouse=True, params=["coroutine", "future"])
def run_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(Store, "kind", request.param)
    return str(request.param)


async def test_calls_of_one_loop_turn_are_one_batch() -> None:
    store = Store()
    batcher = Batcher(store.runner)
    assert await asyncio.gather(*(batcher.submit(n) for n in range(5))) == [0, 2, 4, 6, 8]
    assert store.batches == [[0, 1, 2, 3, 4]]


async def test_calls_made_while_a_batch_is_in_flight_form_the_next() -> None:
    store = Store()
    store.gate.clear()
    batcher = Batcher(store.runner, max_in_flight=1)
    first = asyncio.ensure_future(batcher.submit(1))
    await asyncio.sleep(0.01)
    later = [asyncio.ensure_future(batcher.submit(n)) for n in (2, 3)]
    await asyncio.sleep(0.01)
    assert store.batches == [[1]]  # one in flight: the others wait for it
    store.gate.set()
    assert await first == 2 and [await f for f in later] == [4, 6]
    assert store.batches == [[1], [2, 3]]


async def test_batches_are_bounded() -> None:
    store = Store()
    batcher = Batcher(store.runner, max_batch=2, max_in_flight=4)
    await asyncio.gather(*(batcher.submit(n) for n in range(5)))
    assert store.batches == [[0, 1], [2, 3], [4]]


async def test_an_error_reaches_every_call_of_its_batch() -> None:
    store = Store()
    store.fail = ConnectionError("down")
    batcher = Batcher(store.runner)
    results = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    store.fail = None
    assert await batcher.submit(3) == 6  # the next batch goes as usual


async def test_a_lingering_call_rides_with_the_next_urgent_one() -> None:
    store = Store()
    batcher = Batcher(store.runner)
    lingering = asyncio.ensure_future(batcher.submit(1, linger=10.0))
    await asyncio.sleep(0.02)
    assert store.batches == []  # nobody waits on it: it waits for company
    assert await batcher.submit(2) == 4
    assert await asyncio.wait_for(lingering, 1) == 2
    assert store.batches == [[1, 2]]


async def test_a_lingering_call_alone_goes_when_its_time_is_up() -> None:
    store = Store()
    batcher = Batcher(store.runner)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await asyncio.wait_for(batcher.submit(1, linger=0.05), 2) == 2
    assert loop.time() - started >= 0.045
    assert store.batches == [[1]]


async def test_aclose_sends_what_lingers_and_waits_for_it() -> None:
    store = Store()
    batcher = Batcher(store.runner)
    lingering = asyncio.ensure_future(batcher.submit(7, linger=60.0))
    await asyncio.sleep(0)
    await asyncio.wait_for(batcher.aclose(), 2)
    assert lingering.done() and lingering.result() == 14
    assert store.batches == [[7]]


@pytest.mark.parametrize("linger", [0.0, 0.01])
async def test_a_cancelled_caller_leaves_its_item_in_the_batch(linger: float) -> None:
    store = Store()
    batcher = Batcher(store.runner)
    call = asyncio.ensure_future(batcher.submit(5, linger=linger))
    await asyncio.sleep(0)
    call.cancel()
    await asyncio.wait_for(batcher.aclose(), 2)
    assert store.batches == [[5]]


async def test_a_run_that_refuses_its_batch_at_once_fails_every_call_and_goes_on() -> None:
    """A run that answers with a future may raise before it has one (the Redis batch: an
    argument that cannot be sent): its batch fails, the next batch goes."""
    seen: list[list[int]] = []

    def start(items: Sequence[int]) -> asyncio.Future[list[int]]:
        seen.append(list(items))
        if 13 in items:
            raise ValueError("unlucky")
        done: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        done.set_result([item + 1 for item in items])
        return done

    batcher: Batcher[int, int] = Batcher(start, max_in_flight=1)
    bad = await asyncio.gather(batcher.submit(13), batcher.submit(1), return_exceptions=True)
    assert all(isinstance(result, ValueError) for result in bad)
    assert await batcher.submit(2) == 3
    assert seen == [[13, 1], [2]]
    await batcher.aclose()
