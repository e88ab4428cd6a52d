"""The database goes away (issue 7, point 1): a turn's ``end`` states what is stored. It comes
only once the answer is stored (the server retries for ``FLOWGATE_STORE_RETRY`` seconds); if the
server gives up, ``end`` says ``failed`` and the question is later answered by a ``failed`` row.
Never ``turn_failed`` followed by ``complete``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import scripted_graph
from tests.e2e.wsclient import opened, send
from tests.faults.conftest import (
    FINALISE_BOUND,
    Deployment,
    Recorder,
    all_finished,
    assert_answered_once,
    assert_turn,
    eventually,
    history_of,
    joined,
    new_chat,
    record,
    words,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


async def _flow(d: Deployment, reply: str, delay: float) -> tuple[str, str, str]:
    """A flow answering ``reply``, a token of its owner and a new chat id."""
    flow = d.create_flow(scripted_graph(reply, delay=delay))
    return flow, d.token(), new_chat()


async def test_postgres_restart_mid_turn_end_names_a_stored_answer(
    deployment: Deployment,
) -> None:
    """Down 1.5 s while the turn streams, back before it ends: the pool's dead connections
    must not turn into a lost (or misreported) answer."""
    d = deployment
    reply, question = words(30), "through a postgres restart"
    flow, token, chat = await _flow(d, reply, 0.1)
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": question}})
        await a.expect(lambda r: r.count("stream") >= 3, 10, "3 stream frames before the fault")
        await asyncio.to_thread(d.postgres.restart, 1.5)
        await all_finished(a, b, timeout=15)
    await _assert_stored_complete(d, chat, question, reply, a, b)


async def test_postgres_down_when_the_turn_ends_delays_end_until_stored(
    deployment: Deployment,
) -> None:
    """Down from mid-turn until 2.5 s after the model finished: ``end`` waits for the store
    (STORE_RETRY is 10 s here), and both sockets stay open meanwhile."""
    d = deployment
    reply, question = words(10), "answer while postgres is away"
    flow, token, chat = await _flow(d, reply, 0.1)
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": question}})
        await a.expect(lambda r: r.count("stream") >= 3, 10, "3 stream frames before the fault")
        await asyncio.to_thread(d.postgres.stop)
        # The model is done after ~1 s; the database is still away for a while.
        await a.expect(lambda r: r.count("stream") == 10, 5, "all 10 pieces")
        await asyncio.sleep(2.5)
        back_at = time.monotonic()
        early = [(r.name, r.summary()) for r in (a, b) if r.count("end") or r.ended]
        await asyncio.to_thread(d.postgres.start)
        await all_finished(a, b, timeout=15)
    assert not early, f"end (or a close) before the database was back: {early}"
    for seen in (a, b):
        at = seen.time_of("end")
        assert at is None or at >= back_at, f"{seen.name}: end before the database was back"
    await _assert_stored_complete(d, chat, question, reply, a, b)


async def test_postgres_gone_past_store_retry_ends_failed_then_a_failed_row(
    deployment_factory: Callable[..., Deployment],
) -> None:
    """Down for longer than STORE_RETRY (1 s here): ``end`` ``failed`` while the database is
    away; once it is back, the history shows the question answered by a ``failed`` row."""
    d = deployment_factory(store_retry="1")
    reply, question = words(10), "postgres does not come back in time"
    flow, token, chat = await _flow(d, reply, 0.1)
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": question}})
        await a.expect(lambda r: r.count("stream") >= 3, 10, "3 stream frames before the fault")
        await asyncio.to_thread(d.postgres.stop)
        try:
            # ~0.7 s of model left, 1 s of retries, and slack for a loaded machine.
            await all_finished(a, b, timeout=10)
        finally:
            await asyncio.to_thread(d.postgres.start)
    for seen in (a, b):
        end = assert_turn(seen, statuses={"failed"})
        assert reply.startswith(end["message"])
    assert a.of_type("end") == b.of_type("end")

    async def failed_row() -> bool:
        rows = await d.rows(chat)
        return any(r["is_bot"] and r["status"] == "failed" for r in rows)

    assert await eventually(failed_row, FINALISE_BOUND + 5), await d.rows(chat)
    assert_answered_once(await d.rows(chat), question, status="failed")
    history = await history_of(d.b.chat_url(flow, token, chat))
    assert [(m["is_bot"], m["status"]) for m in history][:2] == [(True, "failed"), (False, None)]


async def _assert_stored_complete(
    d: Deployment, chat: str, question: str, reply: str, a: Recorder, b: Recorder
) -> None:
    ends = []
    for seen in (a, b):
        end = assert_turn(seen, statuses={"complete"}, reply=reply)
        ends.append(end)
    assert ends[0] == ends[1], "the two sockets were told different ends"
    rows = await d.rows(chat)
    answer = assert_answered_once(rows, question, status="complete", message=reply)
    assert len(rows) == 2, rows
    assert ends[0]["message_id"] == answer["id"], "end names a message that is not stored"
