"""The BuildStore contract: the fake, the SQL table on SQLite and PostgreSQL, and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from app.domain.builds import BuildRecord, BuildStatus
from app.domain.errors import StoreUnavailable
from app.domain.ports import BuildStore
from app.infra.redis.build_store import RedisBuildStore
from app.infra.sql.build_store import SqlBuildStore
from app.testing import FakeBuildStore
from tests.contract.conftest import (
    BUILD_BACKENDS,
    CALL_TIMEOUT,
    CLOSED_REDIS_URL,
    FAKE,
    REDIS,
    Clients,
    database_url,
    unreachable_database_url,
)

OpenBuilds = Callable[[], BuildStore]
TTL = 60
GRAPH = {"nodes": [{"id": "in", "type": "ChatInput", "params": {}}], "edges": []}


@pytest.fixture(params=BUILD_BACKENDS)
def open_builds(request: pytest.FixtureRequest, clients: Clients) -> OpenBuilds:
    """Opens the same build store again, on a client of its own (a fake is shared as is)."""
    if request.param == FAKE:
        fake = FakeBuildStore()
        return lambda: fake
    if request.param == REDIS:
        url: str = request.getfixturevalue("redis_url")
        prefix: str = request.getfixturevalue("redis_prefix")
        return lambda: RedisBuildStore(clients.redis(url), prefix)
    database = database_url(request, request.param)
    return lambda: SqlBuildStore(clients.sql_sessions(database))


@pytest.fixture
def builds(open_builds: OpenBuilds) -> BuildStore:
    return open_builds()


@pytest.fixture(params=BUILD_BACKENDS)
def unreachable_builds(
    request: pytest.FixtureRequest, clients: Clients, tmp_path: Path
) -> BuildStore:
    if request.param == FAKE:
        fake = FakeBuildStore()
        fake.down = True
        return fake
    if request.param == REDIS:
        return RedisBuildStore(clients.redis(CLOSED_REDIS_URL), "flowgate-test:")
    return SqlBuildStore(clients.sql_sessions(unreachable_database_url(request.param, tmp_path)))


def new_flow_id() -> str:
    return uuid.uuid4().hex


async def test_a_stored_record_reads_back_equal(builds: BuildStore) -> None:
    record = BuildRecord(
        flow_id=new_flow_id(),
        version_id=None,
        status=BuildStatus.SUCCESS,
        graph_data=GRAPH,
        problems=["node in: 问题", "node out: missing"],
    )

    await builds.put(record, TTL)

    assert await builds.get(record.flow_id, None) == record


async def test_an_unknown_record_is_none(builds: BuildStore) -> None:
    assert await builds.get(new_flow_id(), None) is None
    assert await builds.get(new_flow_id(), 7) is None


async def test_a_version_has_a_record_of_its_own(builds: BuildStore) -> None:
    flow_id = new_flow_id()
    draft = BuildRecord(flow_id, None, BuildStatus.SUCCESS, graph_data=GRAPH)
    version = BuildRecord(flow_id, 7, BuildStatus.FAILURE, problems=["node x: unknown type"])

    await builds.put(draft, TTL)
    await builds.put(version, TTL)

    assert await builds.get(flow_id, None) == draft
    assert await builds.get(flow_id, 7) == version
    assert await builds.get(flow_id, 8) is None


async def test_putting_again_replaces_the_record(builds: BuildStore) -> None:
    flow_id = new_flow_id()
    await builds.put(BuildRecord(flow_id, 3, BuildStatus.SUCCESS, graph_data=GRAPH), TTL)
    failed = BuildRecord(flow_id, 3, BuildStatus.FAILURE, graph_data=None, problems=["bad"])

    await builds.put(failed, TTL)

    assert await builds.get(flow_id, 3) == failed


async def test_another_process_sees_the_record(open_builds: OpenBuilds) -> None:
    record = BuildRecord(new_flow_id(), None, BuildStatus.SUCCESS, graph_data=GRAPH)

    await open_builds().put(record, TTL)

    assert await open_builds().get(record.flow_id, None) == record


async def test_a_record_expires_after_its_ttl(builds: BuildStore) -> None:
    record = BuildRecord(new_flow_id(), None, BuildStatus.SUCCESS, graph_data=GRAPH)
    await builds.put(record, 1)
    assert await builds.get(record.flow_id, None) == record

    await asyncio.sleep(1.5)

    assert await builds.get(record.flow_id, None) is None


async def test_an_unreachable_store_raises_store_unavailable(
    unreachable_builds: BuildStore,
) -> None:
    record = BuildRecord(new_flow_id(), None, BuildStatus.SUCCESS, graph_data=GRAPH)
    async with asyncio.timeout(CALL_TIMEOUT):
        with pytest.raises(StoreUnavailable):
            await unreachable_builds.get(record.flow_id, None)
        with pytest.raises(StoreUnavailable):
            await unreachable_builds.put(record, TTL)


@pytest.mark.integration
async def test_redis_records_are_bisheng_hashes_with_a_ttl(
    redis_url: str, redis_prefix: str, clients: Clients
) -> None:
    redis: Redis = clients.redis(redis_url)
    flow_id = new_flow_id()
    await RedisBuildStore(redis, redis_prefix).put(
        BuildRecord(flow_id, 5, BuildStatus.SUCCESS, graph_data=GRAPH, problems=["p"]), TTL
    )

    key = f"{redis_prefix}flow_data_{flow_id}_5"
    stored = await redis.hgetall(key)
    assert stored.keys() == {b"status", b"graph_data", b"problems"}
    assert stored[b"status"] == b"success"
    assert json.loads(stored[b"graph_data"]) == GRAPH
    assert json.loads(stored[b"problems"]) == ["p"]
    assert 0 < await redis.ttl(key) <= TTL
