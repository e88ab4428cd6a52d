"""Running a flow graph for one turn, streaming the text that reaches ``ChatOutput``.

Nodes run lazily, pulled from ``ChatOutput`` backwards: a node starts when a node it feeds
first reads from it, so every node runs after its sources have produced what it reads, a node
that streams into ``ChatOutput`` streams through piece by piece, and nodes that feed nothing on
the way to ``ChatOutput`` never run. Everything runs in the caller's task: cancelling it stops
the turn, and closing the iterator :meth:`GraphRuntime.run` returns closes every node (and so
every model call) it started.

A ``ChatOutput`` that passes on the pieces of one source that feeds nothing else (the usual
``ChatInput -> model -> ChatOutput``) is not run: its source's pieces are the answer, read
straight from the source, without a node output and a reader between (the per-piece cost of
a streamed answer).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from app.domain.errors import InvalidGraph
from app.domain.graph.context import Incoming, NodeContext, RuntimeServices, TurnInput
from app.domain.graph.nodes import CHAT_OUTPUT, CHAT_OUTPUT_NODE, NodeRegistry, NodeType
from app.domain.graph.validation import parse_graph, reachable_from


@dataclass(frozen=True)
class CompiledNode:
    id: str
    type: NodeType[Any]
    params: msgspec.Struct
    #: The nodes feeding this one, in edge order.
    sources: tuple[str, ...]
    #: The system prompt the sources ask for (``Incoming.system``).
    system: str | None


@dataclass(frozen=True)
class CompiledGraph:
    """A validated graph reduced to what ``ChatOutput`` depends on, sources first."""

    nodes: tuple[CompiledNode, ...]
    output_id: str
    #: The source whose pieces ``ChatOutput`` passes on unchanged, read directly (above).
    direct_id: str | None = None

    @property
    def reads_history(self) -> bool:
        return any(node.type.reads_history for node in self.nodes)


class GraphRuntime:
    def __init__(self, registry: NodeRegistry, services: RuntimeServices) -> None:
        self._registry = registry
        self._services = services

    def compile(self, graph: object) -> CompiledGraph:
        """Validate ``graph`` once (:class:`InvalidGraph` lists the problems) for many turns."""
        parsed, problems = parse_graph(graph, self._registry)
        if problems:
            raise InvalidGraph(problems)
        output_id = next(n.id for n in parsed.nodes.values() if n.type.name == CHAT_OUTPUT)
        needed = reachable_from(output_id, parsed.edges, backwards=True)
        edges = [(s, t) for s, t in parsed.edges if s in needed and t in needed]

        compiled: dict[str, CompiledNode] = {}
        # Validation ruled out cycles, so each pass adds at least one node whose sources are in.
        while len(compiled) < len(needed):
            for node in parsed.nodes.values():
                if node.id not in needed or node.id in compiled:
                    continue
                sources = tuple(s for s, t in edges if t == node.id)
                if set(sources) <= compiled.keys():
                    compiled[node.id] = CompiledNode(
                        node.id, node.type, node.params, sources, _system(sources, compiled)
                    )
        return CompiledGraph(
            tuple(compiled.values()), output_id, _direct_source(compiled, output_id)
        )

    async def run(self, compiled: CompiledGraph, turn: TurnInput) -> AsyncGenerator[str, None]:
        """The pieces of the answer, as they reach ``ChatOutput``."""
        outputs: dict[str, _NodeOutput] = {}
        direct: Callable[[], AsyncIterator[str]] | None = None
        for node in compiled.nodes:
            if node.id == compiled.output_id and direct is not None:
                continue  # a pass-through: not run (the module's docstring)
            incoming = Incoming([outputs[s].reader() for s in node.sources], node.system)
            context = NodeContext(node.id, turn, self._services)
            start = functools.partial(node.type.run, node.params, incoming, context)
            if node.id == compiled.direct_id:
                direct = start
            else:
                outputs[node.id] = _NodeOutput(start)
        source: AsyncIterator[str] | None = None
        try:
            if direct is None:
                source = outputs[compiled.output_id].reader()
            else:
                source = direct()  # started on the first read, as a node output would be
            async for piece in source:
                yield piece
        finally:
            # Consumers first, then their sources.
            if direct is not None:
                await _aclose(source)
            for output in reversed(outputs.values()):
                await output.aclose()


def _direct_source(compiled: dict[str, CompiledNode], output_id: str) -> str | None:
    """The node whose pieces the built-in ``ChatOutput`` would pass on unchanged: its only
    source, when that source feeds no other node (so nobody else reads its pieces)."""
    output = compiled[output_id]
    if output.type is not CHAT_OUTPUT_NODE or len(output.sources) != 1:
        return None
    (source,) = output.sources
    readers = sum(node.sources.count(source) for node in compiled.values())
    return source if readers == 1 else None


async def _aclose(iterator: AsyncIterator[str] | None) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


def _system(sources: tuple[str, ...], compiled: dict[str, CompiledNode]) -> str | None:
    for source in sources:
        node = compiled[source]
        if node.type.system_prompt is not None:
            system = node.type.system_prompt(node.params)
            if system is not None:
                return system
    return None


class _NodeOutput:
    """One node's output during one turn; every node it feeds reads all of it.

    The node starts on the first read. Pieces are kept so that a second reader (a node with
    two consumers) gets them too; all readers run in the turn's one task, one at a time.
    """

    def __init__(self, start: Callable[[], AsyncIterator[str]]) -> None:
        self._start = start
        self._source: AsyncIterator[str] | None = None
        self._pieces: list[str] = []
        self._done = False

    def reader(self) -> _Reader:
        return _Reader(self)

    async def piece(self, index: int) -> str:
        if index < len(self._pieces):
            return self._pieces[index]
        if self._done:
            raise StopAsyncIteration
        if self._source is None:
            self._source = self._start()
        try:
            piece = await anext(self._source)
        except StopAsyncIteration:
            self._done = True
            raise
        self._pieces.append(piece)
        return piece

    async def aclose(self) -> None:
        await _aclose(self._source)


class _Reader:
    # A class, not an async generator, so that an abandoned reader needs no finalising.
    def __init__(self, output: _NodeOutput) -> None:
        self._output = output
        self._index = 0

    def __aiter__(self) -> _Reader:
        return self

    async def __anext__(self) -> str:
        piece = await self._output.piece(self._index)
        self._index += 1
        return piece
