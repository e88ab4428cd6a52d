"""Chat "processes" for flowgate's unit tests: :class:`app.testing.Gateway` (the services
composed exactly as the server composes them, over fakes and in-process twins) with the chat
tests' defaults; several may share one :class:`MemoryStore`, as several server processes share
one Redis."""

from __future__ import annotations

from typing import Any
from unittest import mock

from app.domain.metrics import Metrics
from app.domain.session import SocketSession
from app.domain.users import User
from app.testing import ALICE, FakeChatModel, FakeTransport, Gateway, chain, node


class Process(Gateway):
    """One server process's services, without a server."""

    def __init__(
        self, *, chat_model: Any = None, metrics: Metrics | None = None, **overrides: Any
    ) -> None:
        options = {"turn_timeout": 5.0, "history_turns": 2, "store_retry": 1.0, **overrides}
        super().__init__(
            chat_model=chat_model or FakeChatModel(["Hi", " there"]),
            translator=mock.AsyncMock(),
            metrics=metrics,
            **options,
        )
        self.model = self.chat_model

    async def connect(
        self, graph: dict[str, Any], chat_id: str | None = "c1", user: User = ALICE
    ) -> tuple[SocketSession, FakeTransport]:
        client = await self.open("chat", graph=graph, chat_id=chat_id, user=user)
        return client.session, client.transport


def scripted(reply: str, delay: float = 0.0) -> dict[str, Any]:
    return chain(node("ScriptedModel", "m", reply=reply, delay=delay))


LLM = chain(node("ChatModel", "m"))
