"""Property-based: whatever a client sends, only flowgate's own answers come out (issue 9).

- the frame dispatcher answers every frame with a reply or an error frame, never an exception;
- the rate limiter serves at most ``burst + rate × t`` frames over any t seconds;
- the admission request parser and admission raise nothing but :class:`Rejected`, and what
  reaches a repository fits the database's columns;
- the claim parser raises nothing but :class:`InvalidToken`, and refuses repeated keys.

Each property is bounded (``max_examples``, no deadline on a shared machine) so that the suite
stays a few seconds long.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any, ClassVar

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar import WebSocket

from app.api.chat_socket import _QUERY_KEYS, _admission_request, _query
from app.domain import frames
from app.domain.admission import (
    MAX_FLOW_ID_LENGTH,
    AdmissionService,
    _parse_version_id,
)
from app.domain.chat.feature import ChatFeature
from app.domain.connection import Connection
from app.domain.dispatcher import FLOOD_FACTOR, FrameDispatcher
from app.domain.errors import InvalidToken
from app.domain.features.base import Feature
from app.domain.features.compute import ComputeFeature
from app.domain.features.translate import TranslateFeature
from app.domain.flows import Flow, FlowStatus, FlowVersion
from app.domain.rejections import Rejected
from app.domain.users import User
from app.infra.auth.jwt_verifier import MAX_USER_ID_LENGTH, JWTVerifier, _user
from app.infra.memory import InProcessConnectionCounter
from tests.fakes import (
    FakeBuildStore,
    FakeChatRepository,
    FakeFlowRepository,
    FakeTokenVerifier,
    FakeTranslator,
    FakeTransport,
)
from tests.unit.auth.test_jwt_verifier import HS256, SECRET

BOUNDED = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
INT64 = 2**63
ALICE = User(id="alice")
ERROR_CODES = {value for name, value in vars(frames.ErrorCode).items() if not name.startswith("_")}

# -- strategies ------------------------------------------------------------------------------

# Numbers around every bound the protocol has: 64-bit ids, limit 1-100, seq -1.
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-(2**63) - 1, -(2**63), -2, -1, 0, 1, 100, 101, INT64 - 1, INT64, 10**30]),
    st.floats(allow_nan=False),
)
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "\x00", "a\x00b", "x" * 200]))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
ACTIONS = [None, "chat", "stop", "history", "resume", "ping", "auth", "compute", "translate"]
FIELDS = [
    "inputs",
    "input",
    "client_msg_id",
    "before_id",
    "limit",
    "after_id",
    "after_seq",
    "turn_id",
    "token",
    "data",
    "text",
    "target_language",
]


@st.composite
def client_frames(draw: st.DrawFn) -> bytes:
    """A frame as a client could send it: JSON objects of the protocol's fields, deep nesting,
    other JSON values, and bytes that are not JSON at all."""
    kind = draw(st.sampled_from(["object", "deep", "value", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "value":
        return json.dumps(draw(json_values)).encode()
    frame: dict[str, Any] = {}
    action = draw(st.one_of(st.sampled_from(ACTIONS), texts, json_values))
    if action is not None or draw(st.booleans()):
        frame["action"] = action
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=5, unique=True)):
        if field == "inputs" and draw(st.booleans()):
            frame["inputs"] = {"input": draw(st.one_of(texts, json_values))}
        else:
            frame[field] = draw(json_values)
    raw = json.dumps(frame)
    if kind == "deep":
        depth = draw(st.integers(min_value=1, max_value=5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        raw = raw[:-1] + (", " if frame else "") + f'"x": {opener * depth}1{closer * depth}}}'
    return raw.encode()


class Probe(Feature):
    """The chat feature's actions and decoders, answered ``{"ok": true}`` once decoded."""

    name = "probe"
    actions: ClassVar = ChatFeature.actions

    async def handle(self, connection: Connection, request: Any) -> None:
        await connection.send(b'{"ok": true}')


def features() -> list[Feature]:
    return [Probe(), ComputeFeature(), TranslateFeature(FakeTranslator())]


def connection(transport: FakeTransport) -> Connection:
    flow = Flow(id="f1", name="f", owner_id="alice", status=FlowStatus.ONLINE, graph={})
    from app.domain.admission import Admission

    admission = Admission(
        user=ALICE, flow=flow, feature="x", graph={}, chat_id="c1", version_id=None
    )
    return Connection(admission, transport)


# -- the frame decoder -----------------------------------------------------------------------


@BOUNDED
@given(raw=client_frames(), as_text=st.booleans())
@example(raw=b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}", as_text=False)
@example(raw=b'{"action": "history", "before_id": 9223372036854775808}', as_text=True)
@example(raw=b'{"action": "resume", "after_id": 1, "after_seq": 1e400}', as_text=False)
@example(raw=b'{"inputs": {"input": "a\\u0000"}}', as_text=False)
def test_every_frame_gets_a_reply_or_an_error_frame(raw: bytes, as_text: bool) -> None:
    async def run() -> None:
        for feature in features():
            transport = FakeTransport()
            dispatcher = FrameDispatcher(connection(transport), feature, FakeTokenVerifier(), 1e9)
            data: bytes | str = raw.decode("utf-8", "replace") if as_text else raw
            await dispatcher.dispatch(data)  # must not raise
            assert len(transport.sent) == 1, transport.sent
            reply = transport.sent[0]
            if reply.get("type") == "error":
                assert reply["code"] in ERROR_CODES
                assert "Traceback" not in str(reply["message"])
                if reply["code"] == "invalid_message":
                    assert "$" in str(reply["message"])  # its JSON path
            assert transport.closed_with is None
            dispatcher.stop()

    asyncio.run(run())


class Recorder(Feature):
    """The chat feature's actions, each request answered with its type and fields."""

    name = "recorder"
    actions: ClassVar = ChatFeature.actions | {"compute": ComputeFeature.actions["compute"]}

    async def handle(self, connection: Connection, request: Any) -> None:
        served = [a for a, t in self.actions.items() if type(request).__name__ == t.__name__]
        await connection.send(
            msgspec.json.encode(
                {
                    "type": type(request).__name__,
                    "of_its_type": all(isinstance(request, self.actions[a]) for a in served),
                    "fields": msgspec.structs.asdict(request),
                }
            )
        )


@BOUNDED
@given(raw=client_frames(), as_text=st.booleans())
@example(raw=b'{"action": "compute", "action": "ping"}', as_text=False)
@example(raw=b'{"action": "ping", "action": "compute", "data": 2}', as_text=True)
@example(raw=b'{"data": 2, "action": "compute"}', as_text=False)
@example(raw=b'{"action": "auth", "token": ""}', as_text=False)
@example(raw=b'{"action": "auth", "token": "alice"}', as_text=False)
@example(raw=b'{"action": "ping"}', as_text=True)
@example(raw=b'{"action": "history", "limit": 5}', as_text=False)
@example(raw=b'{"action": "resume", "after_id": 3, "turn_id": "t", "after_seq": 2}', as_text=True)
@example(raw=b'{"action": null, "inputs": {"input": "q"}}', as_text=False)
@example(raw=b'{"action": "chat", "inputs": {"input": "a\\u0000"}}', as_text=True)
def test_one_decode_answers_as_the_long_way_does(raw: bytes, as_text: bool) -> None:
    """A frame decoded at once by its action (``known_action_decoder``) is answered exactly
    as the envelope-then-type decoding answers it: the same reply, or the same error."""

    async def answers(known: bool) -> list[Any]:
        replies = []
        for feature in [Recorder(), *features()]:
            if not known:
                feature.known_action_decoder = None
            transport = FakeTransport()
            dispatcher = FrameDispatcher(connection(transport), feature, FakeTokenVerifier(), 1e9)
            await dispatcher.dispatch(raw.decode("utf-8", "replace") if as_text else raw)
            replies.append(transport.sent)
            dispatcher.stop()
        return replies

    async def run() -> None:
        at_once, the_long_way = await answers(known=True), await answers(known=False)
        assert at_once == the_long_way
        for reply in at_once[0]:
            assert reply.get("of_its_type", True)

    asyncio.run(run())


@pytest.mark.parametrize("depth", [frames.MAX_DEPTH, frames.MAX_DEPTH + 1, 5000])
def test_depth_is_measured_exactly(depth: int) -> None:
    raw = b'{"a": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    if depth <= frames.MAX_DEPTH:
        frames.check_depth(raw)
        frames.check_depth(raw.decode())
    else:
        with pytest.raises(frames.TooDeep):
            frames.check_depth(raw)
    # Brackets inside strings do not count.
    frames.check_depth(json.dumps({"s": "[" * 5000}).encode())


@BOUNDED
@given(value=json_values)
def test_depth_check_agrees_with_the_json_value(value: object) -> None:
    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max(map(depth, v), default=0)
        if isinstance(v, dict):
            return 1 + max(map(depth, v.values()), default=0)
        return 0

    raw = json.dumps(value)
    for limit in (1, 2, 3):
        try:
            frames.check_depth(raw, limit)
            measured_ok = True
        except frames.TooDeep:
            measured_ok = False
        assert measured_ok == (depth(value) <= limit)


# -- the rate limiter ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=100, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 5.0, 20.0, 100.0]),
    # Each frame's gap after the previous one; None: exactly the last ``retry_after``.
    gaps=st.lists(
        st.one_of(st.just(0.0), st.none(), st.floats(min_value=0.0, max_value=0.3)),
        max_size=400,
    ),
)
def test_rate_limit_is_exact_over_every_window(rate: float, gaps: list[float | None]) -> None:
    clock = Clock()
    transport = FakeTransport()
    dispatcher = FrameDispatcher(
        connection(transport), ComputeFeature(), FakeTokenVerifier(), rate, clock=clock
    )
    served: list[float] = []
    refused = 0
    wait, due = 0.0, None
    for gap in gaps:
        clock.now += wait if gap is None else gap
        answer = dispatcher.retry_after()
        if due is not None and clock.now >= due + 1e-9:
            assert answer == 0, "waiting retry_after was not enough"
        if answer < 0:
            break  # closed for flooding
        if answer == 0:
            served.append(clock.now)
            due = None
        else:
            refused += 1
            wait, due = answer, clock.now + answer
    burst = max(rate, 1.0)
    for i, start in enumerate(served):
        for last in range(i, len(served)):
            assert last - i + 1 <= burst + rate * (served[last] - start) + 1e-6
    assert refused <= FLOOD_FACTOR * burst + rate * (clock.now - 1000.0) + 1e-6


def test_a_flood_is_served_burst_plus_rate_then_closed() -> None:
    async def run() -> None:
        clock = Clock()
        transport = FakeTransport()
        conn = connection(transport)
        dispatcher = FrameDispatcher(conn, ComputeFeature(), FakeTokenVerifier(), 20, clock=clock)
        sent = 0
        while sent < 10_000 and not conn.closed:
            clock.now += 0.0001  # 10,000 pings in one second
            await dispatcher.dispatch(b'{"action": "ping"}')
            sent += 1
        pongs = transport.of_type("pong")
        limited = [f for f in transport.sent if f.get("code") == "rate_limited"]
        assert len(pongs) <= 20 + 20 * 1.0
        assert len(limited) <= FLOOD_FACTOR * 20 + 20 * 1.0
        assert all(float(f["retry_after"]) > 0 for f in limited)  # type: ignore[arg-type]
        assert transport.closed_with == (1008, "rate limit exceeded")
        # 20 served, 40 refused, the 61st closes (6 ms refill 0.12 frame: no whole one).
        assert sent == 20 + 40 + 1

    asyncio.run(run())


# -- the admission request parser ------------------------------------------------------------


class BoundedFlows(FakeFlowRepository):
    """A fake that fails as the database would on what does not fit its columns."""

    async def get(self, flow_id: str) -> Flow | None:
        if len(flow_id) > MAX_FLOW_ID_LENGTH or "\x00" in flow_id:
            raise ValueError("value too long for type character varying(32)")
        return await super().get(flow_id)

    async def get_version(self, version_id: int) -> FlowVersion | None:
        if not -INT64 <= version_id < INT64:
            raise OverflowError("int too big to convert")
        return await super().get_version(version_id)


header_names = st.sampled_from([b"authorization", b"Authorization", b"cookie", b"origin", b"x-a"])
header_values = st.one_of(
    st.binary(max_size=100),
    st.builds(lambda t: b"Bearer " + t, st.binary(max_size=60)),
    st.builds(lambda t: b"access_token_cookie=" + t, st.binary(max_size=60)),
    st.just(b"Bearer token-alice"),
    st.just(b"a=1; access_token_cookie=token-alice; access_token_cookie=x"),
)
query_values = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["token-alice", "9223372036854775807", "9223372036854775808", "-1", " 1", "1_0", "١"]
    ),
    st.integers().map(str),
)


@st.composite
def query_strings(draw: st.DrawFn) -> bytes:
    parts = []
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        key = draw(st.sampled_from(["t", "chat_id", "version_id", "x", "t%00", ""]))
        parts.append(f"{key}={draw(query_values)}")
    raw = "&".join(parts).encode("utf-8", "surrogatepass")
    return draw(st.one_of(st.just(raw), st.binary(max_size=60)))


@BOUNDED
@given(
    query=query_strings(),
    headers=st.lists(st.tuples(header_names, header_values), max_size=5),
    flow_id=st.one_of(st.text(max_size=40), st.just("x" * 33), st.just("f\x00")),
    feature=st.sampled_from(["chat", "compute", "nope"]),
    version=st.booleans(),
)
def test_admission_raises_only_rejected(
    query: bytes,
    headers: list[tuple[bytes, bytes]],
    flow_id: str,
    feature: str,
    version: bool,
) -> None:
    async def run() -> None:
        flows = BoundedFlows()
        flow = await flows.add("f", "alice", {}, FlowStatus.ONLINE)
        chosen = flow.id if version else flow_id
        service = AdmissionService(
            verifier=FakeTokenVerifier({"token-alice": ALICE}),
            flows=flows,
            chats=FakeChatRepository(),
            builds=FakeBuildStore(),
            features={"chat", "compute"},
            allowed_origins={"https://app.example"},
            max_connections_per_user=100,
            counter=InProcessConnectionCounter(),
        )
        scope: Any = {
            "type": "websocket",
            "path": f"/api/v1/chat/{chosen}",
            "query_string": query,
            "headers": headers,
        }
        socket: WebSocket[Any, Any, Any] = WebSocket(scope)
        request = _admission_request(socket, chosen, feature)
        try:
            admitted = await service.admit(request)
        except Rejected:
            return
        assert admitted.user == ALICE
        assert admitted.version_id is None or 0 <= admitted.version_id < INT64

    asyncio.run(run())


@BOUNDED
@given(raw=st.one_of(st.none(), st.text(max_size=30), st.integers().map(str)))
def test_version_id_is_none_an_int64_or_refused(raw: str | None) -> None:
    try:
        parsed = _parse_version_id(raw)
    except Rejected as rejected:
        assert rejected.rejection.reason() == "version not found"
        return
    assert parsed is None or (0 <= parsed < INT64 and str(parsed) == raw.lstrip("0").rjust(1, "0"))  # type: ignore[union-attr]


# -- the claim parser ------------------------------------------------------------------------


@st.composite
def object_strings(draw: st.DrawFn) -> str:
    """A JSON object as a string, maybe with a key repeated (which json.dumps cannot write)."""
    keys = st.sampled_from(["user_id", "user_name", "role", "x"])
    pairs = draw(st.lists(st.tuples(keys, json_values), max_size=5))
    body = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs)
    return "{" + body + "}" + draw(st.sampled_from(["", " ", "x", "}"]))


claims = st.fixed_dictionaries(
    {},
    optional={
        "sub": st.one_of(json_values, object_strings(), st.text(max_size=80)),
        "exp": st.one_of(numbers, st.floats(), json_values),
        "name": json_values,
        "role": json_values,
    },
)


@BOUNDED
@given(payload=claims)
@example(payload={"sub": '{"user_id": "u8", "role": "user", "role": "admin"}', "exp": 1e9})
@example(payload={"sub": "{" + '"a":{' * 3000, "exp": 1e9})
@example(payload={"sub": 10**40, "exp": 1e9})
def test_claims_raise_only_invalid_token(payload: dict[str, Any]) -> None:
    try:
        user = _user(payload)
    except InvalidToken:
        return
    assert 1 <= len(user.id) <= MAX_USER_ID_LENGTH and user.id.isprintable()
    assert user.expires_at is not None and math.isfinite(user.expires_at)
    sub = payload["sub"]
    if isinstance(sub, str) and sub.startswith("{"):
        pairs = json.loads(sub, object_pairs_hook=lambda p: p)
        names = [k for k, _ in pairs]
        assert len(names) == len(set(names)), "a repeated key was accepted"


@settings(max_examples=100, deadline=None)
@given(
    token=st.one_of(
        st.text(max_size=200),
        st.lists(st.text(max_size=40), min_size=3, max_size=3).map(".".join),
        st.just("a" * 9000),
    )
)
def test_any_token_string_is_a_user_or_invalid_token(token: str) -> None:
    verifier = JWTVerifier(HS256)

    async def run() -> None:
        with pytest.raises(InvalidToken):
            await verifier.verify(token)

    asyncio.run(run())


def test_a_signed_payload_with_a_repeated_key_is_refused() -> None:
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    secret = SECRET.encode()
    header = b64(b'{"alg": "HS256", "typ": "JWT"}')
    payload = b64(b'{"sub": "u8", "role": "user", "role": "admin", "exp": 99999999999}')
    signature = b64(hmac.new(secret, header + b"." + payload, hashlib.sha256).digest())
    token = (header + b"." + payload + b"." + signature).decode()
    verifier = JWTVerifier(HS256)
    with pytest.raises(InvalidToken, match="repeats a key"):
        asyncio.run(verifier.verify(token))
    assert msgspec.json.decode(base64.urlsafe_b64decode(payload + b"=="))["role"] == "admin"


# Pieces of a query string: the keys admission reads, separators, escapes good and bad.
_QUERY_PIECES = st.sampled_from(
    [
        "t",
        "chat_id",
        "version_id",
        "x",
        "=",
        "&",
        "%",
        "+",
        "%74",
        "%3D",
        "%26",
        "%zz",
        "é",
        " ",
        "1",
    ]
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_QUERY_PIECES, max_size=16).map("".join))
@example("t=a&t=b&chat_id=c")
@example("%74=x&t=y")  # an encoded key is the key
@example("chat_id=a+b&t=%2B")
@example("&&t&chat_id=")  # empty pairs skipped; a bare key is a blank value
def test_the_query_is_read_as_parse_qsl_reads_it(query: str) -> None:
    """The admission's own reading of the query (plain pairs without ``parse_qsl``) gives
    what ``parse_qsl`` gives for the whole string: the first value of each key it reads."""
    from urllib.parse import parse_qsl

    expected: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, separator="&"):
        if key in _QUERY_KEYS:
            expected.setdefault(key, value)
    assert _query(query.encode("latin-1")) == expected
