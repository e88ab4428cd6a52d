"""The process running a turn goes away (issue 7, point 4): ``kill -9`` or SIGTERM past the
grace. The turn is finalised ``interrupted`` with the text streamed so far, every socket of the
chat is told (``end`` ``interrupted``, ``close``), and the chat is free again."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import scripted_graph
from tests.e2e.wsclient import opened, send
from tests.faults.conftest import (
    FINALISE_BOUND,
    SHUTDOWN_GRACE,
    TURN_LEASE,
    Deployment,
    FaultServer,
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


async def test_kill9_of_the_turns_process_interrupts_on_the_other(deployment: Deployment) -> None:
    d = deployment
    reply, question = words(30), "the process dies under me"
    flow = d.create_flow(scripted_graph(reply, delay=0.1))
    token, chat = d.token(), new_chat()
    b_url = d.b.chat_url(flow, token, chat)
    async with opened(d.a.chat_url(flow, token, chat)) as here, opened(b_url) as there:
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": question}})
        await b.expect(lambda r: r.count("stream") >= 8, 10, "8 stream frames before the kill")
        d.a.kill9()
        killed_at = time.monotonic()
        await b.finished(FINALISE_BOUND + 3)
        await a.socket_closed(5)
    end = assert_turn(b, statuses={"interrupted"}, reply=reply)
    closed_at = b.time_of("close")
    assert closed_at is not None and closed_at - killed_at <= FINALISE_BOUND, (
        f"close {closed_at and closed_at - killed_at:.1f} s after the kill; bound "
        f"{FINALISE_BOUND} s (lease {TURN_LEASE} s)"
    )
    assert a.ended, "A's socket still open after its process was killed"
    assert len(b.streamed()) < len(reply)
    rows = await d.rows(chat)
    answer = assert_answered_once(rows, question, status="interrupted", message=b.streamed())
    assert end["message_id"] == answer["id"]
    history = await history_of(b_url)
    assert (history[0]["status"], history[0]["message"]) == ("interrupted", b.streamed())
    # The chat is free again at once (not `busy` for the old 45 s).
    async with opened(b_url) as there:
        again = await record(there, "B (next turn)")
        await send(there, {"inputs": {"input": "and now?"}})
        await again.finished(15)
    assert not again.errors, again.summary()
    assert_turn(again, statuses={"complete"}, reply=reply)


async def test_sigterm_past_the_grace_interrupts_and_stores_the_partial(
    deployment: Deployment,
) -> None:
    d = deployment
    reply, question = words(50), "a turn longer than the grace"  # 5 s against a 1 s grace
    flow = d.create_flow(scripted_graph(reply, delay=0.1))
    token, chat = d.token(), new_chat()
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": question}})
        await a.expect(lambda r: r.count("stream") >= 5, 10, "5 stream frames before SIGTERM")
        streams_before = a.count("stream")
        d.a.sigterm()
        termed_at = time.monotonic()
        await a.socket_closed(SHUTDOWN_GRACE + 10)
        await b.finished(FINALISE_BOUND + 3)
    end = assert_turn(a, statuses={"interrupted"}, reply=reply)
    assert a.frames[-1]["type"] == "close", f"close is not the last frame: {a.summary()}"
    assert (a.close_code, a.close_reason) == (1012, "service restart"), a.summary()
    assert a.count("stream") > streams_before, "the turn did not go on during the grace"
    end_at = a.time_of("end")
    assert end_at is not None and end_at - termed_at >= SHUTDOWN_GRACE * 0.8, "end before grace"
    assert len(a.streamed()) < len(reply)
    assert_turn(b, statuses={"interrupted"}, reply=reply)
    assert b.of_type("end") == [end], "B was told another end"
    assert d.a.wait_exit(15) in (0, -15)
    rows = await d.rows(chat)
    answer = assert_answered_once(rows, question, status="interrupted", message=a.streamed())
    assert end["message_id"] == answer["id"]


async def test_embedded_restart_finalises_a_turn_killed_mid_stream(tmp_path: Path) -> None:
    """One process on the embedded default (SQLite, no Redis): killed mid-turn and started
    again on the same var dir and database, it answers the orphaned question ``interrupted``."""
    server = FaultServer.make(tmp_path, "solo", turn_lease=str(TURN_LEASE))
    try:
        await asyncio.to_thread(server.start)
        reply, question = words(30), "embedded and killed"
        flow = server.create_flow("solo", scripted_graph(reply, delay=0.1))
        token, chat = server.token("solo"), new_chat()
        url = server.chat_url(flow, token, chat)
        async with opened(url) as socket:
            seen = await record(socket, "solo")
            await send(socket, {"inputs": {"input": question}})
            await seen.expect(lambda r: r.count("stream") >= 5, 10, "5 stream frames")
            server.kill9()
            await seen.socket_closed(5)
        streamed = seen.streamed()
        await asyncio.to_thread(server.launch)

        async def answered() -> bool:
            return any(m["is_bot"] for m in await history_of(url))

        assert await eventually(answered, FINALISE_BOUND + 5), await history_of(url)
        history = await history_of(url)
        assert [(m["is_bot"], m["status"]) for m in history] == [
            (True, "interrupted"),
            (False, None),
        ], history
        assert history[1]["message"] == question
        # The in-process turn log died with the process: whatever was kept is a prefix.
        assert streamed.startswith(history[0]["message"]), (history[0]["message"], streamed)
        async with opened(url) as socket:
            again = await record(socket, "solo (next turn)")
            await send(socket, {"inputs": {"input": "and now?"}})
            await again.finished(15)
        assert not again.errors, again.summary()
        assert_turn(again, statuses={"complete"}, reply=reply)
        rows = await history_of(url)
        assert len(rows) == 4, rows
    finally:
        server.stop()
        print(server.log()[-6000:])  # pytest shows it when the test failed
        shutil.rmtree(tmp_path, ignore_errors=True)
