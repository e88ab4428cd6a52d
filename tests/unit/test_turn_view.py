"""TurnView.accept_own (the per-piece path of the turn running here) keeps accept's rules."""

from __future__ import annotations

from app.domain.chat.turn_frames import TurnFrames
from app.domain.chat.turn_view import TurnView


def test_own_frames_are_taken_in_order_once_and_not_after_close() -> None:
    framer = TurnFrames(flow_id="f", chat_id="c", user_id="u", turn_id="t")
    begin, start, piece = framer.begin("q", 1), framer.frame("start", ""), framer.stream("a")
    view = TurnView("t")
    view.accept_own(0, begin)
    view.accept_own(1, start)
    view.accept_own(1, start)  # a position it has: dropped
    view.accept_own(2, piece)
    assert view.frames == [begin, start, piece] and view.next_seq == 3
    later = framer.stream("c")  # seq 3 skipped: 4 waits for it, as with accept
    framer.next_seq = 4
    after_gap = framer.stream("d")
    view.accept_own(4, after_gap)
    assert view.next_seq == 3 and view.pending == {4: after_gap}
    view.accept_own(3, later)
    assert view.frames[3:] == [later, after_gap] and not view.pending
    close = framer.frame("close", "")
    view.accept_own(5, close)
    assert view.ended
    view.accept_own(6, framer.stream("late"))
    assert view.next_seq == 6
