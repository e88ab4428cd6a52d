"""``GET /metrics`` of a real server moves as sockets open and close, turns end and admissions
are refused; no label names a user, chat, flow or turn; in multi-process mode too, two workers."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Server, make_server
from tests.e2e.wsclient import close_of, opened, send, until

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(server: Server) -> tuple[Samples, str]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{server.http}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return samples, response.text


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until_value(server: Server, name: str, expected: float, **labels: str) -> Samples:
    """Scrapes until ``name`` has ``expected`` (a socket's close is served after the client's
    close handshake): 50 tries, 0.1 s apart."""
    for _ in range(50):
        samples, _ = await scrape(server)
        if value(samples, name, **labels) == expected:
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name}{labels} is {value(samples, name, **labels)}, not {expected}")


async def _sockets_turns_and_refusals(server: Server, user: str) -> None:
    flow = server.create_flow(user)
    chat_id = f"chat-of-{user}"
    before, _ = await scrape(server)
    url = f"{server.ws}/api/v1/chat/{flow}?t={server.token(user)}&chat_id={chat_id}"
    async with opened(url) as socket:
        opened_ = await until_value(
            server,
            "flowgate_open_sockets",
            value(before, "flowgate_open_sockets", feature="chat") + 1,
            feature="chat",
        )
        assert value(opened_, "flowgate_admissions_total", code="", reason="admitted") == (
            value(before, "flowgate_admissions_total", code="", reason="admitted") + 1
        )
        await send(socket, {"inputs": {"input": "count these words please"}})
        frames = await until(socket, "close")
        turn_id = str(frames[0]["turn_id"])
        pieces = sum(1 for frame in frames if frame["type"] == "stream")
        assert pieces > 0 and frames[-2]["status"] == "complete"
        after_turn, text = await scrape(server)
    for name, labels, grew in [
        ("flowgate_turns_total", {"status": "complete"}, 1),
        ("flowgate_pieces_streamed_total", {}, pieces),
        ("flowgate_turn_duration_seconds_count", {}, 1),
        ("flowgate_turn_first_piece_seconds_count", {}, 1),
        ("flowgate_model_latency_seconds_count", {}, 1),
        ("flowgate_turns_total", {"status": "failed"}, 0),
    ]:
        assert value(after_turn, name, **labels) == value(before, name, **labels) + grew, name

    code, _ = await close_of(f"{server.ws}/api/v1/chat/{flow}?t=not-a-token&chat_id={chat_id}")
    assert code == 1008
    refused = await until_value(
        server,
        "flowgate_admissions_total",
        value(before, "flowgate_admissions_total", code="1008", reason="unauthorized") + 1,
        code="1008",
        reason="unauthorized",
    )
    # The first socket has gone: the gauge is back where it was.
    assert value(refused, "flowgate_open_sockets", feature="chat") == value(
        before, "flowgate_open_sockets", feature="chat"
    )
    for secret in (user, chat_id, flow, turn_id):
        assert secret not in text, f"{secret} is in /metrics"
    for _, labels in refused:
        for _, label in labels:
            assert label not in (user, chat_id, flow, turn_id)


async def test_metrics_move_with_sockets_turns_and_refusals(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    server.start()
    try:
        await _sockets_turns_and_refusals(server, "metrics-user")
    finally:
        server.stop()


@pytest.mark.integration
async def test_metrics_in_multiprocess_mode_sum_two_workers(
    tmp_path: Path, pg_database_url: str, redis_url: str, redis_prefix: str
) -> None:
    """``app run --workers 2`` on PostgreSQL and Redis: whichever worker answers a scrape, it
    counts both workers' sockets and turns."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    server = make_server(
        tmp_path, database_url=pg_database_url, redis_url=redis_url, redis_prefix=redis_prefix
    )
    server.env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    server.start(sys.executable, "-m", "app", "run", "--workers", "2")
    try:
        await _sockets_turns_and_refusals(server, "multiprocess-user")
        assert len(list(directory.glob("counter_*.db"))) == 2, "two workers write their counters"
    finally:
        server.stop()
    # A worker that stops says so: its live gauge files are gone.
    assert not list(directory.glob("gauge_livesum_*.db"))
