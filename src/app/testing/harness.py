"""Running features and graphs without a server: the services composed exactly as the server
composes them (``app.bootstrap.compose``), over the fakes and the in-process twins."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncGenerator, Iterable, Mapping, Sequence
from itertools import pairwise
from types import TracebackType
from typing import Any
from unittest import mock

import msgspec

from app.bootstrap import Container, compose, in_process_adapters
from app.domain.admission import Admission
from app.domain.connection import Connection
from app.domain.features.base import FeatureFactory
from app.domain.flows import Flow, FlowStatus, Graph
from app.domain.graph import (
    GraphRuntime,
    NodeType,
    RuntimeServices,
    TurnInput,
    default_registry,
    validate_graph,
)
from app.domain.llm import ModelMessage
from app.domain.metrics import Metrics
from app.domain.ports import ChatModel, Translator
from app.domain.session import SocketSession
from app.domain.users import User
from app.infra.memory import MemoryStore
from app.infra.settings import Settings, load_settings
from app.testing.fakes import (
    FakeBuildStore,
    FakeChatModel,
    FakeChatRepository,
    FakeFlowRepository,
    FakeTokenVerifier,
    FakeTranslator,
    FakeTransport,
)

ALICE = User(id="alice")
#: Frames a :class:`Client` waits for at most, in seconds, unless told otherwise.
WAIT = 5.0


def node(node_type: str, node_id: str | None = None, **params: Any) -> dict[str, Any]:
    """One node of a graph: ``node("Shout", exclaim=True)``; the id defaults to the type's name
    in lower case."""
    return {"id": node_id or node_type.lower(), "type": node_type, "params": params}


def chain(*nodes: dict[str, Any]) -> Graph:
    """The graph ``ChatInput -> nodes... -> ChatOutput``, one edge after another."""
    every = [node("ChatInput", "in"), *nodes, node("ChatOutput", "out")]
    edges = [{"source": s["id"], "target": t["id"]} for s, t in pairwise(every)]
    return {"nodes": every, "edges": edges}


def make_settings(**overrides: Any) -> Settings:
    """flowgate's settings as the server reads them from an empty environment (no ``FLOWGATE_*``
    variable set), with ``overrides`` (``Settings`` field names: ``turn_timeout=5.0``)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWGATE_")}
    clean["FLOWGATE_JWT_SECRET"] = "unit-test-secret-" + "x" * 32
    with mock.patch.dict(os.environ, clean, clear=True):
        loaded = load_settings()
    return dataclasses.replace(loaded, **overrides)


def _registry(node_types: Iterable[NodeType[Any]]) -> Any:
    registry = default_registry()
    for node_type in node_types:
        registry.register(node_type)
    return registry


def graph_problems(graph: object, node_types: Iterable[NodeType[Any]] = ()) -> list[str]:
    """Validation's problems with ``graph`` (empty: valid), with the built-in node types and
    ``node_types``."""
    return validate_graph(graph, _registry(node_types))


async def stream_graph(
    graph: object,
    text: str = "",
    *,
    node_types: Iterable[NodeType[Any]] = (),
    inputs: Mapping[str, Any] | None = None,
    history: Sequence[ModelMessage] = (),
    chat_model: ChatModel | None = None,
    translator: Translator | None = None,
) -> AsyncGenerator[str, None]:
    """The pieces that reach ``ChatOutput`` when ``graph`` answers ``text``, each as soon as it
    does, as one turn runs it (``GraphRuntime``), with the built-in node types and
    ``node_types``; closing the generator closes every node, as a stopped turn does.

    ``inputs`` is the client's ``inputs`` (``{"input": text}`` by default), ``history`` the
    chat's memory; the ports default to a :class:`FakeChatModel` and a :class:`FakeTranslator`.
    An invalid graph raises ``InvalidGraph`` (its ``problems`` name the nodes).
    """
    services = RuntimeServices(
        chat_model=chat_model or FakeChatModel(), translator=translator or FakeTranslator()
    )
    runtime = GraphRuntime(_registry(node_types), services)
    turn = TurnInput(
        text=text,
        inputs=dict(inputs) if inputs is not None else {"input": text},
        history=list(history),
    )
    pieces = runtime.run(runtime.compile(graph), turn)
    try:
        async for piece in pieces:
            yield piece
    finally:
        await pieces.aclose()


async def run_graph(
    graph: object,
    text: str = "",
    *,
    node_types: Iterable[NodeType[Any]] = (),
    inputs: Mapping[str, Any] | None = None,
    history: Sequence[ModelMessage] = (),
    chat_model: ChatModel | None = None,
    translator: Translator | None = None,
) -> list[str]:
    """Every piece :func:`stream_graph` yields, once the graph has answered."""
    stream = stream_graph(
        graph,
        text,
        node_types=node_types,
        inputs=inputs,
        history=history,
        chat_model=chat_model,
        translator=translator,
    )
    return [piece async for piece in stream]


class Client:
    """One socket of a :class:`Gateway`: frames in through the session (size limit, rate
    limit, decoding, the feature), frames out recorded by a :class:`FakeTransport`."""

    def __init__(self, session: SocketSession, transport: FakeTransport) -> None:
        self.session = session
        self.transport = transport
        self._gone = False

    @property
    def connection(self) -> Connection:
        return self.session.connection

    @property
    def sent(self) -> list[dict[str, object]]:
        """Every frame sent to this socket so far, decoded."""
        return self.transport.sent

    async def send(self, frame: object) -> None:
        """Receive one frame from the client: ``bytes`` and ``str`` as they are, anything
        else encoded as JSON. Returns once the feature's ``handle`` has returned."""
        data = frame if isinstance(frame, bytes | str) else msgspec.json.encode(frame)
        await self.session.receive(data)

    async def ask(
        self, frame: object, replies: int = 1, timeout: float = WAIT
    ) -> list[dict[str, object]]:
        """Send ``frame``, then wait until ``replies`` more frames have come (within
        ``timeout`` seconds, else AssertionError); return every frame that came after it."""
        before = len(self.sent)
        await self.send(frame)
        await self.transport.wait_for(before + replies, timeout)
        return self.sent[before:]

    async def close(self) -> None:
        """The socket has gone (the client left, or the server closed it): the session ends
        and the feature's ``closed`` runs, once, as after a real socket."""
        if not self._gone:
            self._gone = True
            await self.session.close()


class Gateway:
    """One flowgate process without a server: ``compose`` over fakes and in-process twins.

    ``feature_factories`` and ``node_types`` are registered beside the built-ins; None (the
    default) loads the installed entry points instead, as the server does. Every fake is an
    attribute (``flows``, ``chats``, ``builds``, ``verifier``, ``chat_model``, ``translator``),
    so a test arranges and inspects state through them. Several gateways sharing one
    ``store`` (and ``chats``) are several processes sharing one Redis (and database).
    ``metrics`` receives what the services report (a recording
    :class:`~app.domain.metrics.Metrics`; by default nothing is reported).
    ``settings`` overrides flowgate's settings by field name (``turn_timeout=5.0``). The
    server's background work (store health checks, lease renewal, the sweeper) is not started;
    ``await gateway.container.start()`` starts it.
    """

    def __init__(
        self,
        *,
        feature_factories: Iterable[FeatureFactory] | None = None,
        node_types: Iterable[NodeType[Any]] | None = None,
        chat_model: ChatModel | None = None,
        translator: Translator | None = None,
        flows: FakeFlowRepository | None = None,
        chats: FakeChatRepository | None = None,
        builds: FakeBuildStore | None = None,
        store: MemoryStore | None = None,
        metrics: Metrics | None = None,
        **settings: Any,
    ) -> None:
        self.store = store or MemoryStore()
        self.flows = flows or FakeFlowRepository()
        self.chats = chats or FakeChatRepository()
        self.builds = builds or FakeBuildStore()
        self.verifier = FakeTokenVerifier()
        self.chat_model = chat_model or FakeChatModel()
        self.translator = translator or FakeTranslator()
        adapters = in_process_adapters(
            flows=self.flows,
            chats=self.chats,
            builds=self.builds,
            verifier=self.verifier,
            chat_model=self.chat_model,
            translator=self.translator,
            store=self.store,
        )
        self.channels = adapters.fanout
        if metrics is not None:
            adapters.metrics = metrics
        self.container: Container = compose(
            make_settings(**settings),
            adapters,
            feature_factories=feature_factories,
            node_types=node_types,
        )
        self.rooms = self.container.rooms
        self._clients: list[Client] = []

    async def open(
        self,
        feature: str = "chat",
        *,
        user: User | str = ALICE,
        chat_id: str | None = "c1",
        graph: Graph | None = None,
        flow_id: str = "f1",
        version_id: int | None = None,
    ) -> Client:
        """A socket admitted to ``feature`` of flow ``flow_id`` (online, owned by ``user``,
        running ``graph``: by default ``ChatInput -> ScriptedModel -> ChatOutput``, an echo)
        in chat ``chat_id`` (None: a debug connection); the feature's ``opened`` has run.

        The admission is made as given: admission's rules are flowgate's, and not applied.
        """
        if feature not in self.container.features:
            known = ", ".join(f.name for f in self.container.features)
            raise LookupError(f"feature {feature!r} is not registered (registered: {known})")
        if isinstance(user, str):
            user = User(id=user)
        graph = graph if graph is not None else chain(node("ScriptedModel", "model"))
        flow = Flow(
            id=flow_id, name=flow_id, owner_id=user.id, status=FlowStatus.ONLINE, graph=graph
        )
        self.flows.flows.setdefault(flow_id, flow)
        admission = Admission(
            user=user,
            flow=flow,
            feature=feature,
            graph=graph,
            chat_id=chat_id,
            version_id=version_id,
        )
        transport = FakeTransport()
        session = await self.container.sessions.open(admission, transport)
        client = Client(session, transport)
        self._clients.append(client)
        return client

    async def settle(self, timeout: float = WAIT) -> None:
        """Until no turn runs here and every connection has written what it was given."""
        async with asyncio.timeout(timeout):
            while True:
                await asyncio.sleep(0.01)
                if self.rooms.running_turns():
                    continue
                if any(c.busy for c in self.container.connections):
                    continue
                return

    async def aclose(self) -> None:
        """Close every client still open, then the process (features' ``aclose``)."""
        for client in self._clients:
            await client.close()
        self._clients.clear()
        await self.container.aclose()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
