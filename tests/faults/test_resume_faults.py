"""A socket drops mid-turn and the client resumes (issue 7, point 3), on the process running
the turn or on another: ``history`` of what is persisted after ``after_id`` (without the live
turn's own rows), then exactly the live turn's frames after ``after_seq``, then the rest live."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import scripted_graph
from tests.e2e.wsclient import opened, send
from tests.faults.conftest import (
    Deployment,
    all_finished,
    assert_answered_once,
    assert_turn,
    new_chat,
    record,
    words,
)

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.mark.parametrize("where", ["other process", "same process"])
async def test_resume_mid_turn_is_exact(shared_deployment: Deployment, where: str) -> None:
    d = shared_deployment
    reply = words(40)
    flow = d.create_flow(scripted_graph(reply, delay=0.05))  # 2 s a turn
    token, chat = d.token(), new_chat()
    a_url = d.a.chat_url(flow, token, chat)
    resume_url = (d.b if where == "other process" else d.a).chat_url(flow, token, chat)
    # An earlier turn, so that the resumed history has something in it.
    async with opened(a_url) as socket:
        earlier = await record(socket, "earlier turn")
        await send(socket, {"inputs": {"input": "first question"}})
        await earlier.finished(15)
    first_end = assert_turn(earlier, statuses={"complete"}, reply=reply)
    # The turn to resume: read a few pieces, then drop the socket.
    async with opened(a_url) as socket:
        dropped = await record(socket, "A (dropped)")
        await send(socket, {"inputs": {"input": "second question"}})
        await dropped.expect(lambda r: r.count("stream") >= 5, 10, "5 stream frames")
    dropped.stop()
    seen_before = dropped.chat
    assert all(isinstance(f.get("seq"), int) for f in seen_before), (
        f"chat frames carry no seq: {dropped.summary()}"
    )
    turn_id, after_seq = seen_before[0]["turn_id"], seen_before[-1]["seq"]
    assert seen_before[-1]["type"] == "stream", "the turn ended before the socket dropped"
    question_id = seen_before[0]["message_id"]
    async with opened(resume_url) as tail_socket, opened(resume_url) as whole_socket:
        tail = await record(tail_socket, f"resume after seq {after_seq} ({where})")
        whole = await record(whole_socket, f"resume from begin ({where})")
        await send(
            tail_socket,
            {"action": "resume", "after_id": 0, "turn_id": turn_id, "after_seq": after_seq},
        )
        await send(whole_socket, {"action": "resume", "after_id": 0, "turn_id": turn_id})
        await all_finished(tail, whole, timeout=10)
    for seen in (tail, whole):
        # The socket is in the chat from its admission: frames of the live turn may reach it
        # before its resume is read (from the turn's beginning, as any socket of the chat gets
        # them). They must be the turn's first positions, in order; the resume's answer then
        # starts with its history frame, and what follows is checked below.
        types = [f.get("type") for f in seen.frames]
        assert "history" in types, seen.summary()
        unasked, seen.frames = (
            seen.frames[: types.index("history")],
            seen.frames[types.index("history") :],
        )
        assert [f.get("seq") for f in unasked] == list(range(len(unasked))), seen.summary()
        assert {f.get("turn_id") for f in unasked} <= {turn_id}, seen.summary()
        history: list[dict[str, Any]] = seen.frames[0]["messages"]
        got = [(m["message_id"], m["message"][:20]) for m in history]
        assert [m["message"] for m in history] == ["first question", reply], (
            f"resume's history must be what is stored after after_id, oldest first, without "
            f"the live turn's rows (question {question_id}); got {got}"
        )
        assert history[1]["message_id"] == first_end["message_id"]
        assert not seen.errors, seen.summary()
    end = assert_turn(
        tail,
        statuses={"complete"},
        from_seq=after_seq + 1,
        streamed_before=dropped.streamed(),
        reply=reply,
    )
    assert assert_turn(whole, statuses={"complete"}, reply=reply) == end
    assert {f["turn_id"] for f in tail.chat} == {turn_id}
    rows = await d.rows(chat)
    assert len(rows) == 4, rows
    answer = assert_answered_once(rows, "second question", status="complete", message=reply)
    assert (end["message_id"], question_id) == (answer["id"], rows[2]["id"])


async def test_resume_of_a_turn_the_log_does_not_hold_says_resume_unavailable(
    shared_deployment: Deployment,
) -> None:
    d = shared_deployment
    flow = d.create_flow(scripted_graph(words(40), delay=0.05))  # the flow of the test above
    token, chat = d.token(), new_chat()
    url = d.b.chat_url(flow, token, chat)
    async with opened(url) as socket:
        seen = await record(socket, "B")
        await send(
            socket, {"action": "resume", "after_id": 0, "turn_id": "no-such-turn", "after_seq": 3}
        )
        await seen.expect(lambda r: r.count("error") > 0, 5, "an error frame")
    codes = [e.get("code") for e in seen.errors]
    assert codes == ["resume_unavailable"], seen.summary()
    assert not seen.chat, "frames of a turn that does not exist"
