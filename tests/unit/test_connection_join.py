"""A connection joins the stream pieces that wait while its socket pushes back (PROTOCOL.md
§5.1: a ``stream`` frame covers ``first_seq`` to ``seq``), and nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from app.domain import frames
from app.domain.chat.turn_frames import TurnFrames
from app.domain.connection import Connection
from app.testing import FakeTransport
from tests.unit.chat_rig import Process, scripted


class HeldTransport(FakeTransport):
    """A socket whose sends wait until released (``hold``/``release``), as one that pushes
    back; ``raw`` keeps each frame's bytes as sent."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[bytes] = []
        self.open = asyncio.Event()
        self.open.set()

    def hold(self) -> None:
        self.open.clear()

    def release(self) -> None:
        self.open.set()

    async def send(self, data: bytes) -> None:
        await self.open.wait()
        self.raw.append(data)
        await super().send(data)


def _connection(transport: HeldTransport, send_buffer: int = 1 << 20) -> Connection:
    admission: Any = type("A", (), {"user": None, "chat_id": "c1"})()
    return Connection(admission, transport, send_buffer=send_buffer)


def _framer(turn_id: str = "t-1") -> TurnFrames:
    return TurnFrames(flow_id="f1", chat_id="c1", user_id="42", turn_id=turn_id)


async def _flush(connection: Connection, transport: HeldTransport) -> None:
    transport.release()
    async with asyncio.timeout(2):
        while connection.busy:
            await asyncio.sleep(0)


async def test_pieces_waiting_behind_a_held_send_become_one_frame() -> None:
    transport = HeldTransport()
    connection = _connection(transport)
    framer = _framer()
    connection.offer(framer.begin("q", 1))  # seq 0
    connection.offer(framer.frame("start", ""))  # seq 1
    await _flush(connection, transport)
    transport.hold()
    connection.offer(framer.stream("He"))  # seq 2: the writer is held in this frame's send
    await asyncio.sleep(0)
    for piece in ["llo", ', "wor', 'ld"\n', " ✓"]:  # seq 3..6 wait: joined
        connection.offer(framer.stream(piece))
    connection.offer(framer.frame("end", 'Hello, "world"\n ✓'))  # seq 7: not joined
    await _flush(connection, transport)

    sent = transport.sent
    assert [f["type"] for f in sent] == ["begin", "start", "stream", "stream", "end"]
    assert [f["seq"] for f in sent] == [0, 1, 2, 6, 7]
    assert [f.get("first_seq") for f in sent] == [None, None, None, 3, None]
    assert "first_seq" not in sent[2]  # a frame with one piece is unchanged
    assert sent[3]["message"] == 'llo, "world"\n ✓'
    assert "".join(str(f["message"]) for f in sent[2:4]) == sent[4]["message"]
    # Every other field is the turn's, as on the frames it stands for.
    single = msgspec.json.decode(framer.stream("x"))
    for key in set(single) - {"message", "seq"}:
        assert sent[3][key] == single[key], key


async def test_joined_frames_are_counted_at_their_exact_size() -> None:
    transport = HeldTransport()
    connection = _connection(transport)
    framer = _framer()
    transport.hold()
    connection.offer(framer.stream("a"))  # seq 0: being sent
    await asyncio.sleep(0)
    pieces = ["b", '\u00e9"\\', "c" * 50] + ["d"] * 12  # seq 1..15: seq gains a digit
    for piece in pieces:
        connection.offer(framer.stream(piece))
    assert connection._queue is not None and len(connection._queue) == 1
    queued = connection._queued
    await _flush(connection, transport)
    assert len(transport.raw) == 2
    assert queued == len(transport.raw[1])
    assert connection._queued == 0
    assert transport.sent[1]["message"] == "".join(pieces)
    assert (transport.sent[1]["first_seq"], transport.sent[1]["seq"]) == (1, 15)


async def test_nothing_joins_across_turns_gaps_other_frames_or_an_idle_socket() -> None:
    transport = HeldTransport()
    connection = _connection(transport)
    one, two = _framer("t-1"), _framer("t-2")
    connection.offer(one.stream("a"))  # seq 0, written at once: nothing waits
    connection.offer(one.stream("b"))  # seq 1: a burst, not pushback: its own frame
    await _flush(connection, transport)
    assert [f["seq"] for f in transport.sent] == [0, 1]

    transport.hold()
    connection.offer(one.stream("c"))  # seq 2: held
    await asyncio.sleep(0)
    connection.offer(one.stream("d"))  # seq 3
    connection.offer(two.stream("x"))  # another turn: not joined to seq 3
    connection.offer(frames.PONG)
    connection.offer(one.stream("e"))  # seq 4, but after a pong: not joined over it
    one.next_seq += 1  # seq 5 never reaches this socket: a gap
    connection.offer(one.stream("g"))  # seq 6: not joined to seq 4
    await _flush(connection, transport)
    got = [(f.get("turn_id"), f.get("seq"), f.get("message")) for f in transport.sent[2:]]
    assert got == [
        ("t-1", 2, "c"),
        ("t-1", 3, "d"),
        ("t-2", 0, "x"),
        (None, None, None),
        ("t-1", 4, "e"),
        ("t-1", 6, "g"),
    ]
    assert all("first_seq" not in f for f in transport.sent)


async def test_joining_keeps_the_slow_consumer_limit() -> None:
    transport = HeldTransport()
    connection = _connection(transport, send_buffer=2000)
    framer = _framer()
    transport.hold()
    connection.offer(framer.stream("first"))
    await asyncio.sleep(0)
    for _ in range(20):  # 20 x 60 characters of text wait: under 2000 bytes
        connection.offer(framer.stream("w" * 60))
    assert not connection.closed
    for _ in range(20):  # 40 x 60: past it, joined or not
        connection.offer(framer.stream("w" * 60))
    assert connection.closed
    transport.release()
    await asyncio.sleep(0.05)
    assert transport.closed_with == (4008, "slow consumer")


async def test_in_a_chat_a_slow_socket_gets_joined_frames_and_a_fast_one_every_piece() -> None:
    process = Process()
    reply = " ".join(f"w{i}" for i in range(40))
    graph = scripted(reply, delay=0.001)
    fast_session, fast = await process.connect(graph)
    slow = HeldTransport()
    slow_session, held = await process.connect(graph)
    slow_connection = slow_session.connection
    slow_connection.transport = slow
    await fast_session.receive(b'{"inputs": {"input": "q"}}')
    await fast.wait_for(4)  # begin, start and a piece or two
    slow.hold()
    await asyncio.sleep(0.03)  # pieces reach both sockets; the slow one's wait
    slow.release()
    await process.settle()

    def pieces(sent: list[dict[str, object]]) -> list[dict[str, object]]:
        return [f for f in sent if f.get("type") == "stream"]

    fast_pieces = pieces(fast.sent)
    assert len(fast_pieces) == 40 and all("first_seq" not in f for f in fast_pieces)
    slow_pieces = pieces(slow.sent)
    assert len(slow_pieces) < 40
    assert any("first_seq" in f for f in slow_pieces)
    covered: list[int] = []
    for frame in [f for f in held.sent + slow.sent if "seq" in f]:
        seq = int(str(frame["seq"]))
        first = int(str(frame.get("first_seq", seq)))
        covered += range(first, seq + 1)
    assert sorted(covered) == covered == list(range(len(covered)))
    fast_text = "".join(str(f["message"]) for f in fast_pieces)
    assert "".join(str(f["message"]) for f in slow_pieces) == fast_text == reply
