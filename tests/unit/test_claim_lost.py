"""Sessions.claim_lost: the sockets of a chat whose claim the store lost are closed (1013),
and no other socket."""

from __future__ import annotations

import asyncio

from app.domain.rejections import Rejection
from app.testing import Gateway
from tests.unit.test_metrics import RecordingMetrics


async def test_only_the_chats_sockets_are_closed_with_1013() -> None:
    metrics = RecordingMetrics()
    async with Gateway(metrics=metrics) as gateway:
        lost = [await gateway.open(chat_id="c1"), await gateway.open(chat_id="c1")]
        kept = [await gateway.open(chat_id="c2"), await gateway.open("compute", chat_id=None)]

        gateway.container.sessions.claim_lost("c1")
        async with asyncio.timeout(5):
            while any(c.transport.closed_with is None for c in lost):
                await asyncio.sleep(0.01)

        unavailable = Rejection.SERVICE_UNAVAILABLE
        for client in lost:
            assert client.transport.closed_with == (unavailable.code, unavailable.reason("en"))
        assert [c.transport.closed_with for c in kept] == [None, None]
        assert [c.connection.closed for c in kept] == [False, False]
        assert metrics.count("store_failed", "database") == 1
