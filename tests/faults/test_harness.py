"""The fault harness itself: each fixture does what the fault tests rely on (these pass today)."""

from __future__ import annotations

import asyncio
import time

import asyncpg  # type: ignore[import-untyped]
import pytest
import redis

from tests.e2e.conftest import scripted_graph
from tests.e2e.wsclient import opened, send
from tests.faults.conftest import Deployment, joined, new_chat, record, words
from tests.private_stores import PrivatePostgres, PrivateRedis, PrivateRedisCluster

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def test_private_redis_stops_starts_and_restarts_on_its_port(private_redis: PrivateRedis) -> None:
    private_redis.start()
    port = private_redis.port
    assert port != 6379 and private_redis.ping()
    client = private_redis.client()
    try:
        client.set("k", "v")
        private_redis.stop()
        assert not private_redis.running and not private_redis.ping()
        with pytest.raises(redis.ConnectionError):
            client.get("k")
        private_redis.start()
        assert private_redis.port == port and private_redis.ping()
        assert client.get("k") is None  # nothing persisted: a restart loses every key
        client.set("k", "v2")
        began = time.monotonic()
        private_redis.restart(down_for=0.5, kill=True)
        assert time.monotonic() - began >= 0.5
        assert private_redis.ping() and client.get("k") is None
    finally:
        client.close()


async def test_private_postgres_accepts_stops_and_restarts(
    private_postgres: PrivatePostgres,
) -> None:
    pg = private_postgres
    await asyncio.to_thread(pg.ensure_running)
    assert pg.port != 5432 and pg.name.startswith("fgtest_")
    tables = {r["tablename"] for r in await pg.query("SELECT tablename FROM pg_tables")}
    assert {"chat_message", "chat_session", "flow"} <= tables  # migrated
    await asyncio.to_thread(pg.stop)
    assert not pg.running
    with pytest.raises(OSError):
        await pg.query("SELECT 1")
    await asyncio.to_thread(pg.start)
    assert [r[0] for r in await pg.query("SELECT 1")] == [1]
    began = time.monotonic()
    await asyncio.to_thread(pg.restart, 0.5)
    assert time.monotonic() - began >= 0.5
    assert [r[0] for r in await pg.query("SELECT 1")] == [1]
    # The server really runs as postgres, not as root.
    owner = await pg.query("SELECT current_setting('data_directory') AS d")
    assert owner[0]["d"].startswith(f"/var/lib/postgresql/{pg.version}/fgtest_")


async def test_private_postgres_cuts_open_connections_on_stop(
    private_postgres: PrivatePostgres,
) -> None:
    pg = private_postgres
    await asyncio.to_thread(pg.ensure_running)
    connection = await asyncpg.connect(pg.dsn, timeout=3)
    try:
        await asyncio.to_thread(pg.stop)
        with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
            await connection.fetch("SELECT 1", timeout=3)
    finally:
        connection.terminate()
        await asyncio.to_thread(pg.start)


def test_private_redis_cluster_is_ok_and_spreads_keys(
    private_redis_cluster: PrivateRedisCluster,
) -> None:
    cluster = private_redis_cluster
    assert len(cluster.ports) == 3 and 6379 not in cluster.ports
    for port in cluster.ports:
        info = cluster.cluster_info(port)
        assert info["cluster_state"] == "ok" and info["cluster_known_nodes"] == "3"
        assert info["cluster_slots_assigned"] == "16384"
    client = cluster.client()
    try:
        keys = [f"fault-harness:{i}" for i in range(30)]
        for key in keys:
            client.set(key, key.upper())
        assert [client.get(key) for key in keys] == [key.upper().encode() for key in keys]
        owners = {client.get_node_from_key(key).port for key in keys}
        assert len(owners) > 1  # the keys really are spread over the masters
        # A chat's keys with one hash tag share a slot, so multi-key commands work.
        tagged = ["{chat-1}:lease", "{chat-1}:log"]
        client.mset({tagged[0]: "a", tagged[1]: "b"})
        assert client.mget(tagged) == [b"a", b"b"]
        assert client.keyslot(tagged[0]) == client.keyslot(tagged[1])
        found = client.scan_iter(match="fault-harness:*", target_nodes=client.ALL_NODES)
        assert {key.decode() for key in found} == set(keys)
        client.delete(*keys)
    finally:
        client.close()


async def test_two_servers_share_the_private_stores(deployment: Deployment) -> None:
    d = deployment
    for server in (d.a, d.b):
        assert await server.status("/health") == 200
        assert await server.status("/ready") == 200
    reply = words(12)
    flow = d.create_flow(scripted_graph(reply, delay=0.02))
    token, chat = d.token(), new_chat()
    async with (
        opened(d.a.chat_url(flow, token, chat)) as here,
        opened(d.b.chat_url(flow, token, chat)) as there,
    ):
        await joined(here, there)
        a, b = await record(here, "A"), await record(there, "B")
        await send(here, {"inputs": {"input": "harness question"}})
        assert await a.finished(15), a.summary()
        assert await b.finished(15), b.summary()
    assert [f["type"] for f in a.chat][:2] == ["begin", "start"]
    assert a.chat == b.chat  # the watcher on B got the same frames, in order
    end = a.of_type("end")[0]
    assert (end["status"], end["message"]) == ("complete", reply) and a.streamed() == reply
    rows = await d.rows(chat)
    assert [(r["is_bot"], r["message"], r["status"]) for r in rows] == [
        (False, "harness question", None),
        (True, reply, "complete"),
    ]
    assert rows[-1]["id"] == end["message_id"]
    # The process helpers.
    d.a.kill9()
    assert not d.a.alive
    d.b.sigterm()
    assert d.b.wait_exit(15) in (0, -15)
