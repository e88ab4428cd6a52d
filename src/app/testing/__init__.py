"""Fakes and harnesses for unit tests of flowgate and of its extensions: a supported module.

The names in ``__all__`` change only with a note in ``docs/extending.md`` (a test compares
the two). flowgate's own unit tests use them too.

- In-memory repositories: :class:`FakeFlowRepository`, :class:`FakeChatRepository`,
  :class:`FakeBuildStore` (``down = True`` makes one unreachable).
- The in-process turn log, lease, fan-out, connection count and chat owners, over a shared
  :class:`MemoryStore` (the embedded default's own): :class:`InProcessTurnLog`,
  :class:`InProcessLease`, :class:`InProcessChannels`, :class:`InProcessConnectionCounter`,
  :class:`InProcessChatOwners`.
- Scripted ports: :class:`FakeChatModel`, :class:`FakeTranslator`, :class:`FakeTokenVerifier`;
  :class:`FakeTransport`, the socket that records frames.
- Harnesses: :class:`Gateway` (one process's services over the fakes; ``open`` gives a
  :class:`Client`, one socket) for a feature; :func:`run_graph`, :func:`stream_graph` and
  :func:`graph_problems` for a node type; :func:`chain` and :func:`node` to write graphs;
  :func:`make_settings`.
"""

from app.infra.memory import (
    InProcessChannels,
    InProcessChatOwners,
    InProcessConnectionCounter,
    InProcessLease,
    InProcessTurnLog,
    MemoryStore,
)
from app.testing.fakes import (
    FakeBuildStore,
    FakeChatModel,
    FakeChatRepository,
    FakeFlowRepository,
    FakeTokenVerifier,
    FakeTranslator,
    FakeTransport,
)
from app.testing.harness import (
    ALICE,
    Client,
    Gateway,
    chain,
    graph_problems,
    make_settings,
    node,
    run_graph,
    stream_graph,
)

__all__ = [
    "ALICE",
    "Client",
    "FakeBuildStore",
    "FakeChatModel",
    "FakeChatRepository",
    "FakeFlowRepository",
    "FakeTokenVerifier",
    "FakeTranslator",
    "FakeTransport",
    "Gateway",
    "InProcessChannels",
    "InProcessChatOwners",
    "InProcessConnectionCounter",
    "InProcessLease",
    "InProcessTurnLog",
    "MemoryStore",
    "chain",
    "graph_problems",
    "make_settings",
    "node",
    "run_graph",
    "stream_graph",
]
