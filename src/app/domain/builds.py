"""Build records: the result of building a flow (or a draft of it) for debugging."""

from __future__ import annotations

from enum import StrEnum

import msgspec

from app.domain.flows import Graph


class BuildStatus(StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"
    STARTED = "started"
    IN_PROGRESS = "in_progress"


class BuildRecord(msgspec.Struct, frozen=True):
    flow_id: str
    version_id: int | None
    status: BuildStatus
    graph_data: Graph | None = None
    problems: list[str] = msgspec.field(default_factory=list)

    @property
    def key(self) -> str:
        return build_key(self.flow_id, self.version_id)


def build_key(flow_id: str, version_id: int | None = None) -> str:
    """bisheng's key: ``flow_data_{flow_id}`` or ``flow_data_{flow_id}_{version_id}``."""
    return f"flow_data_{flow_id}" if version_id is None else f"flow_data_{flow_id}_{version_id}"
