"""Managing flows: create, publish, version, build. What the CLI (and later an admin API) call.

Every graph is validated before it is stored; a build records ``success`` or ``failure`` with
the problems, under the key that debug connections read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from app.domain.builds import BuildRecord, BuildStatus
from app.domain.errors import InvalidGraph, NotFound
from app.domain.flows import Flow, FlowStatus, FlowVersion, Graph
from app.domain.ports import BuildStore, FlowRepository

#: Returns every problem of a graph (each naming its node), or an empty list.
GraphValidator = Callable[[object], list[str]]


class FlowCatalog:
    def __init__(
        self,
        *,
        flows: FlowRepository,
        builds: BuildStore,
        validate: GraphValidator,
        build_ttl: int,
    ) -> None:
        self._flows = flows
        self._builds = builds
        self._validate = validate
        self._build_ttl = build_ttl

    async def create(self, *, name: str, owner_id: str, graph: object, online: bool) -> Flow:
        valid = self._checked(graph)
        status = FlowStatus.ONLINE if online else FlowStatus.OFFLINE
        return await self._flows.add(name=name, owner_id=owner_id, graph=valid, status=status)

    async def set_online(self, flow_id: str, online: bool) -> Flow:
        status = FlowStatus.ONLINE if online else FlowStatus.OFFLINE
        flow = await self._flows.set_status(flow_id, status)
        if flow is None:
            raise NotFound(f"flow {flow_id} not found")
        return flow

    async def delete(self, flow_id: str) -> None:
        if not await self._flows.delete(flow_id):
            raise NotFound(f"flow {flow_id} not found")

    async def list(self) -> Sequence[Flow]:
        return await self._flows.list()

    async def get(self, flow_id: str) -> Flow:
        flow = await self._flows.get(flow_id)
        if flow is None:
            raise NotFound(f"flow {flow_id} not found")
        return flow

    async def add_version(
        self, flow_id: str, *, graph: object, name: str | None, make_current: bool
    ) -> FlowVersion:
        valid = self._checked(graph)
        version = await self._flows.add_version(
            flow_id, name=name or "", graph=valid, make_current=make_current
        )
        return version

    async def build(
        self, flow_id: str, *, version_id: int | None = None, draft: object | None = None
    ) -> BuildRecord:
        """Validate the draft, the version's graph or the flow's current graph; record it."""
        flow = await self.get(flow_id)
        graph: object = flow.graph
        if version_id is not None:
            version = await self._flows.get_version(version_id)
            if version is None or version.flow_id != flow_id:
                raise NotFound(f"version {version_id} of flow {flow_id} not found")
            graph = version.graph
        if draft is not None:
            graph = draft
        problems = self._validate(graph)
        record = BuildRecord(
            flow_id=flow_id,
            version_id=version_id,
            status=BuildStatus.FAILURE if problems else BuildStatus.SUCCESS,
            graph_data=None if problems or not isinstance(graph, dict) else graph,
            problems=problems,
        )
        await self._builds.put(record, self._build_ttl)
        return record

    def _checked(self, graph: object) -> Graph:
        problems = self._validate(graph)
        if problems:
            raise InvalidGraph(problems)
        assert isinstance(graph, dict)  # a graph without problems is an object
        return graph
