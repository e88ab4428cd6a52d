"""The FlowRepository contract: the fake and the SQL adapter on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from app.domain.errors import NotFound, StoreUnavailable
from app.domain.flows import FlowStatus
from app.domain.ports import FlowRepository
from app.infra.sql.repositories import SqlFlowRepository
from app.testing import FakeFlowRepository
from tests.contract.conftest import (
    CALL_TIMEOUT,
    FAKE,
    SQL_BACKENDS,
    Clients,
    database_url,
    unreachable_database_url,
)

GRAPH = {
    "nodes": [
        {"id": "in", "type": "ChatInput", "params": {}},
        {"id": "out", "type": "ChatOutput", "params": {"note": "héllo 你好"}},
    ],
    "edges": [{"source": "in", "target": "out"}],
}
OTHER_GRAPH = {"nodes": [{"id": "x", "type": "ScriptedModel", "params": {"delay": 0.5}}]}


@pytest.fixture(params=SQL_BACKENDS)
def flows(request: pytest.FixtureRequest, clients: Clients) -> FlowRepository:
    if request.param == FAKE:
        return FakeFlowRepository()
    return SqlFlowRepository(clients.sql_sessions(database_url(request, request.param)))


@pytest.fixture(params=SQL_BACKENDS)
def unreachable_flows(
    request: pytest.FixtureRequest, clients: Clients, tmp_path: Path
) -> FlowRepository:
    if request.param == FAKE:
        fake = FakeFlowRepository()
        fake.down = True
        return fake
    url = unreachable_database_url(request.param, tmp_path)
    return SqlFlowRepository(clients.sql_sessions(url))


async def test_an_added_flow_reads_back_equal(flows: FlowRepository) -> None:
    added = await flows.add("Support bot", "alice", GRAPH, FlowStatus.ONLINE)

    assert (added.name, added.owner_id, added.status, added.graph) == (
        "Support bot",
        "alice",
        FlowStatus.ONLINE,
        GRAPH,
    )
    assert added.current_version_id is None
    assert len(added.id) == 32
    assert await flows.get(added.id) == added


async def test_an_unknown_flow_is_none(flows: FlowRepository) -> None:
    assert await flows.get("0" * 32) is None
    assert await flows.get_version(987654321) is None
    assert await flows.set_status("0" * 32, FlowStatus.ONLINE) is None
    assert await flows.delete("0" * 32) is False


async def test_set_status_changes_the_stored_status(flows: FlowRepository) -> None:
    added = await flows.add("f", "alice", GRAPH, FlowStatus.OFFLINE)

    changed = await flows.set_status(added.id, FlowStatus.ONLINE)

    assert changed is not None and changed.status is FlowStatus.ONLINE
    stored = await flows.get(added.id)
    assert stored is not None and stored.is_online
    assert stored == changed


async def test_list_holds_every_added_flow(flows: FlowRepository) -> None:
    first = await flows.add("one", "alice", GRAPH, FlowStatus.ONLINE)
    second = await flows.add("two", "bob", OTHER_GRAPH, FlowStatus.OFFLINE)

    listed = {flow.id: flow for flow in await flows.list()}

    # The PostgreSQL database is shared by the session: other tests' flows may be there too.
    assert listed[first.id] == first
    assert listed[second.id] == second


async def test_add_version_keeps_the_flow_unless_made_current(flows: FlowRepository) -> None:
    flow = await flows.add("f", "alice", GRAPH, FlowStatus.ONLINE)

    version = await flows.add_version(flow.id, "v1", OTHER_GRAPH, make_current=False)

    assert (version.flow_id, version.name, version.graph) == (flow.id, "v1", OTHER_GRAPH)
    assert isinstance(version.id, int)
    assert await flows.get_version(version.id) == version
    assert await flows.get(flow.id) == flow


async def test_add_version_made_current_becomes_the_flows_graph(flows: FlowRepository) -> None:
    flow = await flows.add("f", "alice", GRAPH, FlowStatus.ONLINE)

    version = await flows.add_version(flow.id, "v2", OTHER_GRAPH, make_current=True)

    current = await flows.get(flow.id)
    assert current is not None
    assert current.graph == OTHER_GRAPH
    assert current.current_version_id == version.id
    assert (current.name, current.owner_id, current.status) == ("f", "alice", FlowStatus.ONLINE)


async def test_version_ids_are_distinct_and_increasing(flows: FlowRepository) -> None:
    flow = await flows.add("f", "alice", GRAPH, FlowStatus.ONLINE)

    ids = [
        (await flows.add_version(flow.id, f"v{n}", GRAPH, make_current=False)).id for n in range(3)
    ]

    assert ids == sorted(set(ids))


async def test_add_version_of_an_unknown_flow_is_not_found(flows: FlowRepository) -> None:
    with pytest.raises(NotFound):
        await flows.add_version("0" * 32, "v1", GRAPH, make_current=True)


async def test_delete_removes_the_flow_and_its_versions(flows: FlowRepository) -> None:
    flow = await flows.add("f", "alice", GRAPH, FlowStatus.ONLINE)
    kept = await flows.add("kept", "alice", GRAPH, FlowStatus.ONLINE)
    versions = [
        await flows.add_version(flow.id, "v1", GRAPH, make_current=False),
        await flows.add_version(flow.id, "v2", OTHER_GRAPH, make_current=True),
    ]
    kept_version = await flows.add_version(kept.id, "v1", GRAPH, make_current=False)

    assert await flows.delete(flow.id) is True

    assert await flows.get(flow.id) is None
    assert [await flows.get_version(v.id) for v in versions] == [None, None]
    assert flow.id not in {f.id for f in await flows.list()}
    assert await flows.delete(flow.id) is False
    assert await flows.get(kept.id) == kept
    assert await flows.get_version(kept_version.id) == kept_version


async def test_an_unreachable_store_raises_store_unavailable(
    unreachable_flows: FlowRepository,
) -> None:
    async with asyncio.timeout(CALL_TIMEOUT):
        with pytest.raises(StoreUnavailable):
            await unreachable_flows.get("0" * 32)
        with pytest.raises(StoreUnavailable):
            await unreachable_flows.add("f", "alice", GRAPH, FlowStatus.ONLINE)
        with pytest.raises(StoreUnavailable):
            await unreachable_flows.list()
