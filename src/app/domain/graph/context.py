"""What a node gets when it runs: the turn, the services, and the text flowing into it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from app.domain.llm import ModelMessage
from app.domain.ports import ChatModel, Translator

#: Put between the outputs of two sources feeding the same node.
SEPARATOR = "\n\n"


class TurnInput(msgspec.Struct, frozen=True):
    """One user message and what the flow may know around it."""

    text: str
    #: The client's ``inputs`` object; a ``PromptTemplate`` may name its keys.
    inputs: dict[str, Any] = {}
    #: The last turns of the chat as user/assistant messages, oldest first.
    history: list[ModelMessage] = []


@dataclass(frozen=True)
class RuntimeServices:
    """The ports that nodes call."""

    chat_model: ChatModel
    translator: Translator


@dataclass(frozen=True)
class NodeContext:
    """What a running node knows besides its params and its input: its own id in the graph,
    the turn (:class:`TurnInput`) and the ports it may call (:class:`RuntimeServices`)."""

    node_id: str
    turn: TurnInput
    services: RuntimeServices


class Incoming:
    """The text flowing into a node: its sources' outputs one after another, in edge order.

    Iterate it for the pieces as they are produced, or await :meth:`text` for the whole text;
    either way it can be read once. ``system`` is the system prompt a source asked the text to
    be sent to a model with (see ``NodeType.system_prompt``).
    """

    def __init__(self, sources: Sequence[AsyncIterator[str]], system: str | None = None) -> None:
        self.system = system
        self._sources = list(sources)
        self._index = 0
        self._separator_due = False

    def __aiter__(self) -> Incoming:
        return self

    async def __anext__(self) -> str:
        while self._index < len(self._sources):
            if self._separator_due:
                self._separator_due = False
                return SEPARATOR
            try:
                return await anext(self._sources[self._index])
            except StopAsyncIteration:
                self._index += 1
                self._separator_due = self._index < len(self._sources)
        raise StopAsyncIteration

    async def text(self) -> str:
        return "".join([piece async for piece in self])
