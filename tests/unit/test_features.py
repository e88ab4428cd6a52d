"""The seed's features and the frame dispatcher, over fake ports and a fake transport."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

import pytest

from app.domain.admission import Admission
from app.domain.connection import Connection
from app.domain.dispatcher import FrameDispatcher, _ExpiryTimers
from app.domain.features.compute import ComputeFeature
from app.domain.features.translate import TranslateFeature
from app.domain.flows import Flow, FlowStatus
from app.domain.users import User
from app.testing import FakeTokenVerifier, FakeTranslator, FakeTransport

ALICE = User(id="alice", expires_at=time.time() + 3600)


def connect(
    feature: object,
    user: User = ALICE,
    rate: float = 100.0,
    verifier: FakeTokenVerifier | None = None,
) -> tuple[FrameDispatcher, FakeTransport, Connection]:
    flow = Flow(id="f1", name="f", owner_id="alice", status=FlowStatus.ONLINE, graph={})
    admission = Admission(
        user=user, flow=flow, feature="x", graph={}, chat_id="c1", version_id=None
    )
    transport = FakeTransport()
    connection = Connection(admission, transport)
    dispatcher = FrameDispatcher(
        connection,
        feature,
        verifier or FakeTokenVerifier(),
        rate,  # type: ignore[arg-type]
    )
    return dispatcher, transport, connection


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (3, {"result": 9.0}),
        ("2.5", {"result": 6.25}),
        (-4, {"result": 16.0}),
        ("abc", {"error": "Invalid input for computation"}),
        (None, {"error": "Invalid input for computation"}),
        (True, {"error": "Invalid input for computation"}),
        ([1], {"error": "Invalid input for computation"}),
        ("1e200", {"error": "Invalid input for computation"}),
    ],
)
async def test_compute_squares_like_the_seed(data: object, reply: dict[str, object]) -> None:
    dispatcher, transport, _ = connect(ComputeFeature())
    import msgspec

    await dispatcher.dispatch(msgspec.json.encode({"action": "compute", "data": data}))
    assert transport.sent == [reply]


async def test_translate_uses_the_port_and_answers_the_seeds_keys() -> None:
    translator = FakeTranslator()
    dispatcher, transport, _ = connect(TranslateFeature(translator))
    await dispatcher.dispatch(b'{"text": "Hello", "target_language": "zh"}')
    await dispatcher.dispatch(b'{"target_language": "zh"}')
    await dispatcher.dispatch(b'{"action": "translate", "text": "Hi"}')
    assert transport.sent == [
        {"translated_text": "translated[zh]: Hello"},
        {"error": "No text provided for translation"},
        {"translated_text": "translated[en]: Hi"},
    ]
    assert translator.calls == [("Hello", "zh"), ("Hi", "en")]


async def test_bad_frames_get_error_frames_and_the_connection_stays() -> None:
    dispatcher, transport, connection = connect(ComputeFeature())
    await dispatcher.dispatch(b"{not json")
    await dispatcher.dispatch(b"[1, 2]")
    await dispatcher.dispatch(b'{"action": "explode"}')
    await dispatcher.dispatch(b'{"data": 3}')
    await dispatcher.dispatch(b'{"action": 5}')
    await dispatcher.dispatch(b'{"action": "compute", "data": 2}')
    codes = [frame.get("code") for frame in transport.sent[:5]]
    assert codes == [
        "invalid_json",
        "invalid_message",
        "unknown_action",
        "unknown_action",
        "invalid_message",
    ]
    assert all(frame["type"] == "error" for frame in transport.sent[:5])
    assert "$.action" in str(transport.sent[4]["message"])
    assert transport.sent[5] == {"result": 4.0}
    assert not connection.closed


async def test_invalid_message_names_the_json_path() -> None:
    from app.domain.features.base import Feature
    from app.domain.frames import HistoryRequest

    class Paged(Feature):
        name = "paged"
        actions = {"history": HistoryRequest}  # noqa: RUF012

        async def handle(self, connection: Connection, request: object) -> None:
            await connection.send(b'{"ok": true}')

    dispatcher, transport, _ = connect(Paged())
    await dispatcher.dispatch(b'{"action": "history", "limit": 500}')
    await dispatcher.dispatch(b'{"action": "history", "limit": 5}')
    assert transport.sent[0]["code"] == "invalid_message"
    assert "$.limit" in str(transport.sent[0]["message"])
    assert transport.sent[1] == {"ok": True}


async def test_ping_is_answered_by_pong() -> None:
    dispatcher, transport, _ = connect(ComputeFeature())
    await dispatcher.dispatch('{"action": "ping"}')
    assert transport.sent == [{"type": "pong"}]


async def test_rate_limit_answers_rate_limited_with_retry_after() -> None:
    dispatcher, transport, _ = connect(ComputeFeature(), rate=5)
    for _ in range(8):
        await dispatcher.dispatch(b'{"action": "ping"}')
    pongs = transport.of_type("pong")
    limited = [f for f in transport.sent if f.get("code") == "rate_limited"]
    assert len(pongs) == 5 and len(limited) == 3
    assert all(0 < float(f["retry_after"]) <= 0.2 for f in limited)  # type: ignore[arg-type]


def test_expiry_timers_are_per_loop_and_go_with_their_loop() -> None:
    # A connection's expiry is kept by its own loop's timers; once a loop is gone, its timers go
    # too (the cache of the last loop's timers holds neither).
    async def expiring() -> tuple[_ExpiryTimers, bool]:
        _dispatcher, transport, _ = connect(
            ComputeFeature(), user=User(id="alice", expires_at=time.time() + 0.05)
        )
        timers = _ExpiryTimers.of_running_loop()
        await asyncio.sleep(0.2)
        return timers, transport.closed_with == (1008, "token expired")

    first, closed_first = asyncio.run(expiring())
    second, closed_second = asyncio.run(expiring())
    assert closed_first and closed_second
    assert first is not second
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None


async def test_token_expiry_closes_with_1008_unless_refreshed() -> None:
    soon = User(id="alice", expires_at=time.time() + 0.2)
    later = User(id="alice", expires_at=time.time() + 3600)
    mallory = User(id="mallory", expires_at=time.time() + 3600)
    verifier = FakeTokenVerifier({"fresh": later, "mallory": mallory})

    dispatcher, transport, connection = connect(ComputeFeature(), user=soon, verifier=verifier)
    await asyncio.sleep(0.4)
    assert transport.closed_with == (1008, "token expired")
    dispatcher.stop()

    dispatcher, transport, connection = connect(ComputeFeature(), user=soon, verifier=verifier)
    await dispatcher.dispatch(b'{"action": "auth", "token": "mallory"}')
    await dispatcher.dispatch(b'{"action": "auth", "token": "forged"}')
    await dispatcher.dispatch(b'{"action": "auth", "token": "fresh"}')
    await asyncio.sleep(0.4)
    assert [f["code"] for f in transport.sent] == ["unauthorized", "unauthorized"]
    assert transport.closed_with is None and connection.user == later
    dispatcher.stop()


async def test_a_handler_gets_its_action_type_from_the_one_decode() -> None:
    import msgspec

    from app.domain.features.base import Feature

    class Note(msgspec.Struct):
        text: str

    class Notes(Feature):
        name = "notes"
        actions = {"note": Note, None: Note}  # noqa: RUF012

        def __init__(self) -> None:
            super().__init__()
            self.got: list[object] = []

        async def handle(self, connection: Connection, request: object) -> None:
            self.got.append(request)

    feature = Notes()
    assert feature.known_action_decoder is not None
    dispatcher, transport, _ = connect(feature)
    await dispatcher.dispatch(b'{"action": "note", "text": "a"}')  # at once
    await dispatcher.dispatch(b'{"text": "b"}')  # no action: the long way
    assert [type(r).__name__ for r in feature.got] == ["Note", "Note"]
    assert all(isinstance(r, Note) for r in feature.got)
    assert [r.text for r in feature.got] == ["a", "b"]  # type: ignore[attr-defined]
    assert transport.sent == []


@pytest.mark.parametrize("config", ["field", "forbid", "tag"])
async def test_types_that_cannot_be_tagged_are_served_the_long_way(config: str) -> None:
    import msgspec

    from app.domain.features.base import Feature

    class WithAction(msgspec.Struct):
        action: str
        n: int = 0

    class Strict(msgspec.Struct, forbid_unknown_fields=True):
        n: int = 0

    class Tagged(msgspec.Struct, tag="own"):
        n: int = 0

    request_type = {"field": WithAction, "forbid": Strict, "tag": Tagged}[config]

    class Odd(Feature):
        name = "odd"
        actions = {"odd": request_type}  # noqa: RUF012

        async def handle(self, connection: Connection, request: object) -> None:
            await connection.send(msgspec.json.encode({"n": request.n}))  # type: ignore[attr-defined]

    feature = Odd()
    assert feature.known_action_decoder is None
    dispatcher, transport, _ = connect(feature)
    await dispatcher.dispatch(b'{"action": "odd", "n": 2}')
    await dispatcher.dispatch(b'{"action": "ping"}')
    if config == "forbid":  # its own decoder refuses the field `action`, as it always did
        assert transport.sent[0]["code"] == "invalid_message"
    else:
        assert transport.sent[0] == {"n": 2}
    assert transport.sent[1] == {"type": "pong"}


async def test_a_frame_past_the_size_limit_closes_1009() -> None:
    _, transport, connection = connect(ComputeFeature())
    dispatcher = FrameDispatcher(
        connection, ComputeFeature(), FakeTokenVerifier(), 100.0, max_message_size=40
    )
    await dispatcher.dispatch(b'{"action": "compute", "data": 3}')
    await dispatcher.dispatch(b'{"action": "compute", "data": 3, "pad": "' + b"x" * 10 + b'"}')
    assert transport.sent == [{"result": 9.0}]
    assert transport.closed_with is not None and transport.closed_with[0] == 1009
    assert connection.closed
