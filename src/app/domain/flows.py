"""Flows (published LLM applications) and their saved versions."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

import msgspec

Graph = dict[str, Any]


class FlowStatus(IntEnum):
    """bisheng's numbering: only ``ONLINE`` (2) may be chatted with through a ``chat_id``."""

    OFFLINE = 1
    ONLINE = 2


class Flow(msgspec.Struct, frozen=True):
    id: str
    name: str
    owner_id: str
    status: FlowStatus
    #: The flow's current graph (the one a chat without ``version_id`` runs).
    graph: Graph
    current_version_id: int | None = None

    @property
    def is_online(self) -> bool:
        return self.status == FlowStatus.ONLINE


class FlowVersion(msgspec.Struct, frozen=True):
    id: int
    flow_id: str
    name: str
    graph: Graph
