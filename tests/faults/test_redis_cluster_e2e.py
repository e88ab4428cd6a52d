"""Two processes on a Redis Cluster (issue 7, point 7): with ``FLOWGATE_REDIS_CLUSTER=true``
flowgate uses the cluster client and sharded pub/sub, and a chat's keys share one slot."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import scripted_graph
from tests.e2e.wsclient import opened, send
from tests.faults.conftest import (
    Deployment,
    all_finished,
    assert_answered_once,
    assert_turn,
    joined,
    new_chat,
    record,
    words,
)
from tests.private_stores import PrivateRedisCluster

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


async def test_two_processes_on_a_redis_cluster_share_a_chat(
    deployment_factory: Callable[..., Deployment],
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    d = deployment_factory(redis_url=cluster.url, redis_cluster="true")
    for server in (d.a, d.b):
        assert await server.status("/ready") == 200, server.name
    reply, question = words(20), "over a redis cluster"
    flow = d.create_flow(scripted_graph(reply, delay=0.02))
    token, chat = d.token(), new_chat()
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A (asker)"), await record(there, "B (watcher)")
        await send(here, {"inputs": {"input": question}})
        await all_finished(a, b, timeout=10)
    end = assert_turn(a, statuses={"complete"}, reply=reply)
    assert assert_turn(b, statuses={"complete"}, reply=reply) == end
    assert a.chat == b.chat
    answer = assert_answered_once(await d.rows(chat), question, status="complete", message=reply)
    assert end["message_id"] == answer["id"]
    # The chat's keys (its turn log at least, kept after the turn) live on one slot.
    prefix = d.a.env["FLOWGATE_REDIS_PREFIX"]
    client = cluster.client()
    try:
        keys = [
            key.decode()
            for key in client.scan_iter(match=f"{prefix}*", target_nodes=client.ALL_NODES)
        ]
        chat_keys = [key for key in keys if chat in key]
        assert chat_keys, f"no key of chat {chat} under {prefix!r}: {keys}"
        slots = {client.keyslot(key) for key in chat_keys}
        assert len(slots) == 1, f"a chat's keys on {len(slots)} slots: {chat_keys}"
    finally:
        client.close()
