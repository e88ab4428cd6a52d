"""Metrics: what the domain reports (over a recording fake, composed as the server composes
it), the prometheus adapter (a fresh registry per test, and multi-process mode in a process of
its own), and the pub/sub header's publish time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.domain.chats import MessageStatus
from app.domain.health import StoreHealth
from app.domain.metrics import Limit, TurnReport
from app.domain.rejections import Rejection
from app.infra.metrics import PrometheusMetrics, exposition
from app.infra.redis.channels import RedisChannels
from app.infra.redis.keys import RedisKeys
from app.testing import FakeChatModel
from tests.unit.chat_rig import LLM, Process, scripted
from tests.unit.test_chat_turns import FailingModel

ROOT = Path(__file__).resolve().parents[2]


class RecordingMetrics:
    """The domain's :class:`~app.domain.metrics.Metrics`, as a list of what was reported."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.turns: list[TurnReport] = []

    def socket_opened(self, feature: str) -> None:
        self.events.append(("opened", feature))

    def socket_closed(self, feature: str) -> None:
        self.events.append(("closed", feature))

    def admission(self, rejection: Rejection | None) -> None:
        self.events.append(("admission", rejection))

    def limit_reached(self, limit: Limit) -> None:
        self.events.append(("limit", limit))

    def turn_ended(self, turn: TurnReport) -> None:
        self.events.append(("turn", turn.status))
        self.turns.append(turn)

    def model_failed(self) -> None:
        self.events.append(("model_failed",))

    def store_failed(self, store: str) -> None:
        self.events.append(("store_failed", store))

    def count(self, *event: Any) -> int:
        return self.events.count(event)


# -- what the domain reports -----------------------------------------------------------------


async def test_a_socket_and_a_complete_turn_are_reported_once_each() -> None:
    metrics = RecordingMetrics()
    rig = Process(metrics=metrics, chat_model=FakeChatModel(["a", "b", "c"]))
    session, transport = await rig.connect(LLM)
    assert metrics.events == [("opened", "chat")]
    await session.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert len(transport.of_type("stream")) == 3
    [turn] = metrics.turns
    assert turn.status is MessageStatus.COMPLETE and turn.pieces == 3
    assert 0 < turn.first_piece <= turn.seconds
    assert 0 < turn.model_seconds <= turn.seconds < 5
    await session.close()
    await session.close()  # closed twice (a failure, then the socket's end): counted once
    assert metrics.events == [
        ("opened", "chat"),
        ("turn", MessageStatus.COMPLETE),
        ("closed", "chat"),
    ]


async def test_a_model_error_fails_the_turn_and_is_counted() -> None:
    metrics = RecordingMetrics()
    rig = Process(metrics=metrics, chat_model=FailingModel())
    session, _ = await rig.connect(LLM)
    await session.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert metrics.count("model_failed") == 1
    [turn] = metrics.turns
    assert (turn.status, turn.pieces) == (MessageStatus.FAILED, 1)


async def test_a_stopped_turn_counts_the_pieces_streamed_before_the_stop() -> None:
    metrics = RecordingMetrics()
    rig = Process(metrics=metrics)
    session, transport = await rig.connect(scripted("a b c d e f g h i j", delay=0.05))
    await session.receive(b'{"inputs": {"input": "q"}}')
    await asyncio.sleep(0.18)
    await session.receive(b'{"action": "stop"}')
    await rig.settle()
    [turn] = metrics.turns
    assert turn.status is MessageStatus.STOPPED
    assert turn.pieces == len(transport.of_type("stream")) > 0


async def test_a_turn_whose_question_is_not_stored_is_failed_and_the_tries_are_store_errors() -> (
    None
):
    metrics = RecordingMetrics()
    rig = Process(metrics=metrics, store_retry=0.25)
    session, transport = await rig.connect(scripted("x"))
    rig.chats.down = True
    await session.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert transport.of_type("error")[0]["code"] == "turn_failed"
    [turn] = metrics.turns
    assert turn == TurnReport(
        status=MessageStatus.FAILED,
        seconds=turn.seconds,
        first_piece=None,
        model_seconds=None,
        pieces=0,
    )
    # Tries at 0, 0.1 and 0.3 s at most (budget 0.25 s): each failure is a database error.
    assert 2 <= metrics.count("store_failed", "database") <= 4
    assert metrics.count("model_failed") == 0


async def test_limits_report_rate_message_size_and_slow_consumer() -> None:
    metrics = RecordingMetrics()
    rig = Process(metrics=metrics, messages_per_second=2.0, max_message_size=64, send_buffer=500)
    session, transport = await rig.connect(scripted(" ".join(["word"] * 60), delay=0.002))
    for _ in range(3):
        await session.receive(b'{"action": "ping"}')
    assert transport.sent[-1]["code"] == "rate_limited"
    assert metrics.count("limit", Limit.RATE) == 1
    await session.receive(b'{"action": "ping", "padding": "' + b"x" * 64 + b'"}')
    assert transport.closed_with is not None and transport.closed_with[0] == 1009
    assert metrics.count("limit", Limit.MESSAGE_SIZE) == 1

    talker, _ = await rig.connect(scripted(" ".join(["word"] * 60), delay=0.002), chat_id="c2")
    _, slow = await rig.connect(scripted(" ".join(["word"] * 60), delay=0.002), chat_id="c2")
    blocked = asyncio.Event()

    async def never_drains(data: bytes) -> None:
        await blocked.wait()

    slow.send = never_drains  # type: ignore[method-assign]
    await asyncio.sleep(0.6)  # the rate limit's bucket refills
    await talker.receive(b'{"inputs": {"input": "q"}}')
    await rig.settle()
    assert slow.closed_with == (4008, "slow consumer")
    assert metrics.count("limit", Limit.SLOW_CONSUMER) == 1


async def test_a_flood_closed_past_its_rate_counts_each_refusal_and_the_close() -> None:
    metrics = RecordingMetrics()
    rig = Process(metrics=metrics, messages_per_second=1.0)
    session, transport = await rig.connect(scripted("x"))
    for _ in range(20):  # the flood allowance is a few frames: closed well before 20
        await session.receive(b'{"action": "ping"}')
        if transport.closed_with is not None:
            break
    assert transport.closed_with is not None and transport.closed_with[0] == 1008
    refused = len(transport.of_type("error"))
    assert refused > 0
    assert metrics.count("limit", Limit.RATE) == refused + 1


async def test_failed_health_checks_are_store_errors_by_store() -> None:
    metrics = RecordingMetrics()

    async def answers() -> None:
        pass

    async def fails() -> None:
        raise ConnectionError("refused")

    health = StoreHealth({"database": answers, "redis": fails}, metrics=metrics)
    for _ in range(3):
        await health.check_now()
    assert metrics.events == [("store_failed", "redis")] * 3


# -- the prometheus adapter ------------------------------------------------------------------


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def test_the_adapter_counts_each_event_in_its_registry() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    metrics.socket_opened("chat")
    metrics.socket_opened("chat")
    metrics.socket_opened("compute")
    metrics.socket_closed("chat")
    metrics.admission(None)
    metrics.admission(Rejection.UNAUTHORIZED)
    metrics.admission(Rejection.TOO_MANY_CONNECTIONS)
    metrics.limit_reached(Limit.CONNECTIONS_PER_USER)
    metrics.turn_ended(TurnReport(MessageStatus.COMPLETE, 3.0, 0.4, 2.5, pieces=7))
    metrics.turn_ended(TurnReport(MessageStatus.FAILED, 0.2, None, None, pieces=0))
    metrics.model_failed()
    metrics.store_failed("database")
    metrics.store_failed("redis")
    metrics.store_failed("redis")
    metrics.publish_failed()
    metrics.delivered(0.003)
    metrics.delivered(-0.5)  # another host's clock ahead: no lag

    assert _value(registry, "flowgate_open_sockets", feature="chat") == 1
    assert _value(registry, "flowgate_open_sockets", feature="compute") == 1
    assert _value(registry, "flowgate_admissions_total", code="", reason="admitted") == 1
    assert _value(registry, "flowgate_admissions_total", code="1008", reason="unauthorized") == 1
    assert (
        _value(registry, "flowgate_admissions_total", code="1013", reason="too_many_connections")
        == 1
    )
    assert _value(registry, "flowgate_admissions_total", code="1008", reason="forbidden") == 0
    assert _value(registry, "flowgate_limit_refusals_total", limit="connections_per_user") == 1
    assert _value(registry, "flowgate_limit_refusals_total", limit="slow_consumer") == 0
    assert _value(registry, "flowgate_turns_total", status="complete") == 1
    assert _value(registry, "flowgate_turns_total", status="failed") == 1
    assert _value(registry, "flowgate_turns_total", status="interrupted") == 0
    assert _value(registry, "flowgate_pieces_streamed_total") == 7
    assert _value(registry, "flowgate_turn_duration_seconds_count") == 2
    assert _value(registry, "flowgate_turn_duration_seconds_sum") == pytest.approx(3.2)
    assert _value(registry, "flowgate_turn_first_piece_seconds_count") == 1
    assert _value(registry, "flowgate_turn_first_piece_seconds_bucket", le="0.5") == 1
    assert _value(registry, "flowgate_turn_first_piece_seconds_bucket", le="0.25") == 0
    assert _value(registry, "flowgate_model_latency_seconds_count") == 1
    assert _value(registry, "flowgate_model_errors_total") == 1
    assert _value(registry, "flowgate_store_errors_total", store="database") == 1
    assert _value(registry, "flowgate_store_errors_total", store="redis") == 2
    assert _value(registry, "flowgate_bus_publish_failures_total") == 1
    assert _value(registry, "flowgate_bus_delivery_lag_seconds_count") == 2
    assert _value(registry, "flowgate_bus_delivery_lag_seconds_bucket", le="0.001") == 1


def test_every_metric_follows_the_conventions_and_labels_are_bounded() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry).socket_opened("chat")
    body, content_type = exposition(PrometheusMetrics(CollectorRegistry()))
    assert content_type.startswith("text/plain; version=")
    assert b"flowgate_turns_total" in body
    families = list(registry.collect())
    assert len(families) == 12
    allowed = {"feature", "code", "reason", "status", "limit", "store", "le"}
    for family in families:
        assert family.name.startswith("flowgate_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples)
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= allowed, sample


def test_two_apps_in_one_process_have_registries_of_their_own() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    PrometheusMetrics(first).model_failed()
    PrometheusMetrics(second)  # the same names again: no "duplicated timeseries"
    assert _value(first, "flowgate_model_errors_total") == 1
    assert _value(second, "flowgate_model_errors_total") == 0


def test_multiprocess_mode_sums_the_processes_files(tmp_path: Path) -> None:
    """Two processes writing to one PROMETHEUS_MULTIPROC_DIR; a third exposes their sum
    (prometheus-client chooses the mode at import: each runs in a process of its own)."""
    report = textwrap.dedent(
        """
        from prometheus_client import CollectorRegistry
        from app.domain.chats import MessageStatus
        from app.domain.metrics import TurnReport
        from app.infra.metrics import PrometheusMetrics
        m = PrometheusMetrics(CollectorRegistry())
        m.socket_opened("chat")
        m.turn_ended(TurnReport(MessageStatus.COMPLETE, 1.0, 0.1, 0.5, pieces=4))
        """
    )
    # A worker that ends as the server ends one: its live gauge goes with it.
    ends = report + "import asyncio; from app.infra.metrics import process_exiting\n"
    ends += "asyncio.run(process_exiting())\n"
    expose = textwrap.dedent(
        """
        import sys
        from app.infra.metrics import exposition
        body, content_type = exposition(None)
        sys.stdout.write(body.decode())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for script in (report, report, ends, expose):
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(done.stdout)
        for s in family.samples
    }
    assert samples[("flowgate_turns_total", (("status", "complete"),))] == 3
    assert samples[("flowgate_pieces_streamed_total", ())] == 12
    assert samples[("flowgate_turn_duration_seconds_count", ())] == 3
    # livesum: the files of the two that did not say they ended (killed, say) still count.
    assert samples[("flowgate_open_sockets", (("feature", "chat"),))] == 2


# -- the publish time on the pub/sub header --------------------------------------------------


class _Heard:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str, int, list[bytes]]] = []

    def on_frames(self, chat_id: str, turn_id: str, first_seq: int, frames: list[bytes]) -> None:
        self.frames.append((chat_id, turn_id, first_seq, frames))

    def on_resync(self) -> None:
        pass


class _Lags:
    def __init__(self) -> None:
        self.lags: list[float] = []

    def publish_failed(self) -> None:
        pass

    def delivered(self, lag: float) -> None:
        self.lags.append(lag)


def test_the_delivery_lag_is_read_from_the_header_and_an_old_header_still_delivers() -> None:
    keys, lags, heard = RedisKeys("p:"), _Lags(), _Heard()
    channels = RedisChannels(object(), keys, origin=b"me", metrics=lags)  # type: ignore[arg-type]
    channels.attach(heard)
    channel = keys.channel("c1").encode()
    sent = int(time.time() * 1000) - 40
    channels.handle(channel, b"Fother@%d|t-1|3\n{}\n{}" % sent)
    channels.handle(channel, b"Fother|t-1|5\n{}")  # a process from before the publish time
    channels.handle(channel, b"Fme@%d|t-1|6\n{}" % sent)  # its own: ignored
    assert heard.frames == [("c1", "t-1", 3, [b"{}", b"{}"]), ("c1", "t-1", 5, [b"{}"])]
    [lag] = lags.lags
    assert 0.04 <= lag < 1.0
