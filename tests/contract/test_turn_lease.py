"""The TurnLease contract, over the in-process twin and Redis: one holder per chat across
processes, renewal, release by the holder only, lapsed leases listed until taken."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from tests.contract.shared_state import Node


async def test_one_holder_per_chat_across_processes(nodes: Callable[[], Node]) -> None:
    one, two = nodes().lease, nodes().lease
    chat = uuid.uuid4().hex
    assert await one.holder(chat) is None
    assert await one.acquire(chat, "p1/t1", 30)
    assert not await two.acquire(chat, "p2/t2", 30)
    assert await two.holder(chat) == "p1/t1"
    await two.release(chat, "p2/t2")  # not the holder: nothing happens
    assert await one.holder(chat) == "p1/t1"
    await one.release(chat, "p1/t1")
    assert await two.acquire(chat, "p2/t2", 30)


async def test_concurrent_acquires_have_one_winner(nodes: Callable[[], Node]) -> None:
    leases = [nodes().lease for _ in range(3)]
    chat = uuid.uuid4().hex
    results = await asyncio.gather(*(leases[i % 3].acquire(chat, f"p{i}/t", 30) for i in range(12)))
    assert results.count(True) == 1


async def test_renewal_keeps_a_lease_and_a_lapsed_one_is_listed(nodes: Callable[[], Node]) -> None:
    lease = nodes().lease
    kept, lapsing = uuid.uuid4().hex, uuid.uuid4().hex
    assert await lease.acquire(kept, "p/t1", 0.3)
    assert await lease.acquire(lapsing, "p/t2", 0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await lease.renew([(kept, "p/t1")], 0.3) == [True]
    assert await lease.holder(kept) == "p/t1"
    assert await lease.holder(lapsing) is None
    lapsed = await lease.lapsed(100)
    assert lapsing in lapsed and kept not in lapsed
    # Taken and released by a finaliser: no longer lapsed.
    assert await lease.acquire(lapsing, "p/finaliser", 5)
    await lease.release(lapsing, "p/finaliser")
    assert lapsing not in await lease.lapsed(100)


async def test_renewal_loses_to_another_holder_and_retakes_a_vanished_lease(
    nodes: Callable[[], Node],
) -> None:
    one, two = nodes().lease, nodes().lease
    taken, vanished = uuid.uuid4().hex, uuid.uuid4().hex
    assert await one.acquire(taken, "p1/t", 0.2)
    await asyncio.sleep(0.3)
    assert await two.acquire(taken, "p2/t", 30)  # it lapsed: someone else took the chat
    assert await one.acquire(vanished, "p1/v", 0.2)
    await asyncio.sleep(0.3)
    assert await one.renew([(taken, "p1/t"), (vanished, "p1/v")], 30) == [False, True]
    assert await two.holder(vanished) == "p1/v"
    assert await two.holder(taken) == "p2/t"


async def test_a_refused_acquire_does_not_put_off_the_holders_lapse(
    nodes: Callable[[], Node],
) -> None:
    holder, other = nodes().lease, nodes().lease
    chat = uuid.uuid4().hex
    # Both connected first (a cluster client finds its slots on its first command): on a slow
    # machine that took longer than the holder's lease, and the refused acquire then won.
    assert await holder.holder(chat) is None
    assert await other.holder(chat) is None
    assert await holder.acquire(chat, "p1/t", 1.0)
    assert not await other.acquire(chat, "p2/t", 30)  # refused: must not move the deadline on
    await asyncio.sleep(1.2)  # the holder died: no renewal
    assert chat in await other.lapsed(100)
