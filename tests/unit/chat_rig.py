"""Chat "processes" for unit tests: the services composed exactly as the server composes them
(``app.bootstrap.compose``), over fakes and in-process twins; several may share one
:class:`MemoryStore`, as several server processes share one Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any
from unittest import mock

from app.bootstrap import Container, compose, in_process_adapters
from app.domain.admission import Admission
from app.domain.flows import Flow, FlowStatus
from app.domain.session import SocketSession
from app.domain.users import User
from app.infra.memory import MemoryStore
from app.infra.settings import Settings, load_settings
from tests.fakes import (
    FakeBuildStore,
    FakeChatModel,
    FakeChatRepository,
    FakeFlowRepository,
    FakeTokenVerifier,
    FakeTransport,
)

ALICE = User(id="alice")


def settings(**overrides: Any) -> Settings:
    """The defaults, as the server reads them from an empty environment, with ``overrides``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWGATE_")}
    clean["FLOWGATE_JWT_SECRET"] = "unit-test-secret-" + "x" * 32
    with mock.patch.dict(os.environ, clean, clear=True):
        loaded = load_settings()
    return dataclasses.replace(loaded, **overrides)


class Process:
    """One server process's services, without a server."""

    def __init__(
        self,
        *,
        store: MemoryStore | None = None,
        chats: FakeChatRepository | None = None,
        chat_model: Any = None,
        **overrides: Any,
    ) -> None:
        self.store = store or MemoryStore()
        self.chats = chats or FakeChatRepository()
        self.model = chat_model or FakeChatModel(["Hi", " there"])
        adapters = in_process_adapters(
            flows=FakeFlowRepository(),
            chats=self.chats,
            builds=FakeBuildStore(),
            verifier=FakeTokenVerifier(),
            chat_model=self.model,
            translator=mock.AsyncMock(),
            store=self.store,
        )
        self.channels = adapters.fanout
        options = {"turn_timeout": 5.0, "history_turns": 2, "store_retry": 1.0, **overrides}
        self.container: Container = compose(settings(**options), adapters)
        self.rooms = self.container.rooms

    async def connect(
        self, graph: dict[str, Any], chat_id: str | None = "c1", user: User = ALICE
    ) -> tuple[SocketSession, FakeTransport]:
        flow = Flow(id="f1", name="f", owner_id=user.id, status=FlowStatus.ONLINE, graph=graph)
        admission = Admission(
            user=user, flow=flow, feature="chat", graph=graph, chat_id=chat_id, version_id=None
        )
        transport = FakeTransport()
        session = await self.container.sessions.open(admission, transport)
        return session, transport

    async def settle(self, timeout: float = 5.0) -> None:
        """Until no turn runs here and every connection has written what it was given."""
        async with asyncio.timeout(timeout):
            while True:
                await asyncio.sleep(0.01)
                if self.rooms.running_turns():
                    continue
                if any(c.busy for c in self.container.connections):
                    continue
                return


def graph(model: dict[str, Any]) -> dict[str, Any]:
    return {
        "nodes": [
            {"id": "in", "type": "ChatInput", "params": {}},
            model,
            {"id": "out", "type": "ChatOutput", "params": {}},
        ],
        "edges": [{"source": "in", "target": "m"}, {"source": "m", "target": "out"}],
    }


def scripted(reply: str, delay: float = 0.0) -> dict[str, Any]:
    return graph({"id": "m", "type": "ScriptedModel", "params": {"reply": reply, "delay": delay}})


LLM = graph({"id": "m", "type": "ChatModel", "params": {}})
