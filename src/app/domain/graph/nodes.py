"""Node types: a name, a params Struct and a run function; the built-ins and their registry.

A run function gets its params, the text flowing into the node (:class:`Incoming`) and a
:class:`NodeContext`, and yields the node's output piece by piece. A node that needs its whole
input awaits ``incoming.text()``; one that streams yields as it goes. Params are msgspec Structs
with ``forbid_unknown_fields`` so that a typo in a graph is reported, not ignored. Secrets never
live in params: model providers come from settings, through the ports in ``RuntimeServices``.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import msgspec

from app.domain.graph.context import Incoming, NodeContext
from app.domain.llm import ModelMessage

CHAT_INPUT = "ChatInput"
CHAT_OUTPUT = "ChatOutput"

P = TypeVar("P", bound=msgspec.Struct)


@dataclass(frozen=True)
class NodeType(Generic[P]):
    """A kind of node a flow graph may use (``{"id": .., "type": name, "params": {..}}``).

    - ``name``: the graph's ``type``; unique among the node types of a process.
    - ``params``: a msgspec Struct (``forbid_unknown_fields=True``) that a node's ``params``
      are converted to when the graph is validated; a bad value is a validation problem that
      names the node. :class:`NoParams` for none.
    - ``run(params, incoming, context)``: an async generator yielding the node's output piece
      by piece. It is called once per turn, when a node it feeds first reads from it; it runs
      in the turn's task, so a stopped turn cancels it (and closes it: put clean-up in
      ``finally``). Raise ``ModelError`` for a failure the user should read.
    """

    name: str
    params: type[P]
    run: Callable[[P, Incoming, NodeContext], AsyncIterator[str]]
    #: The system prompt this node's output should be sent to a model with, if any; the
    #: model nodes it feeds read it as ``incoming.system``.
    system_prompt: Callable[[P], str | None] | None = None
    #: Whether the node reads ``turn.history``: a turn loads the chat's memory only for a
    #: graph in which some node does.
    reads_history: bool = False


class NodeRegistry:
    def __init__(self) -> None:
        self._types: dict[str, NodeType[Any]] = {}

    def register(self, node_type: NodeType[Any]) -> None:
        if node_type.name in self._types:
            raise ValueError(f"node type {node_type.name!r} is already registered")
        self._types[node_type.name] = node_type

    def get(self, name: str) -> NodeType[Any] | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return list(self._types)


@asynccontextmanager
async def closing(stream: AsyncIterator[str]) -> AsyncIterator[AsyncIterator[str]]:
    """Close ``stream`` on the way out, so that when a turn is stopped while a node waits on a
    port's stream, the provider's call (an HTTP response) ends now, not when it is collected.

    The ports promise an ``AsyncIterator``; the ones that hold resources are async generators,
    which have ``aclose``.
    """
    try:
        yield stream
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


_WORD = re.compile(r"\s*\S+\s*|\s+")


def split_words(text: str) -> list[str]:
    """``"Hello brave world"`` -> ``["Hello ", "brave ", "world"]``; the pieces join to ``text``."""
    return _WORD.findall(text)


class NoParams(msgspec.Struct, forbid_unknown_fields=True):
    """The params of a node type that takes none: any key in the graph is a problem."""


async def _chat_input(
    params: NoParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    yield context.turn.text


async def _chat_output(
    params: NoParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    async for piece in incoming:
        yield piece


class PromptTemplateParams(msgspec.Struct, forbid_unknown_fields=True):
    """``template`` names ``{input}`` (the text flowing in), ``{history}`` (the chat's last
    turns, one ``role: content`` line each) and any key of the client's ``inputs``. Other
    placeholders stay as written; ``{{`` and ``}}`` are literal braces."""

    template: str
    system: str | None = None

    def __post_init__(self) -> None:
        # Parsing reports unbalanced braces now, when the graph is validated, not mid-turn.
        list(string.Formatter().parse(self.template))


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Substitute plain ``{name}`` fields found in ``values``; leave every other field as is.

    Attribute and index access (``{input.__class__}``) are never evaluated.
    """
    parts: list[str] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if field is None:
            continue
        if field in values and not spec and conversion is None:
            parts.append(values[field])
        else:
            written = (
                field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            )
            parts.append("{" + written + "}")
    return "".join(parts)


def format_history(history: Sequence[ModelMessage]) -> str:
    return "\n".join(f"{message.role}: {message.content}" for message in history)


async def _prompt_template(
    params: PromptTemplateParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    values = {key: str(value) for key, value in context.turn.inputs.items()}
    values["input"] = await incoming.text()
    values["history"] = format_history(context.turn.history)
    yield render_template(params.template, values)


class ChatModelParams(msgspec.Struct, forbid_unknown_fields=True):
    model: str | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    system: str | None = None


async def _chat_model(
    params: ChatModelParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    prompt = await incoming.text()
    system = params.system if params.system is not None else incoming.system
    messages = [ModelMessage("system", system)] if system is not None else []
    messages += context.turn.history
    messages.append(ModelMessage("user", prompt))
    stream = context.services.chat_model.stream(
        messages, model=params.model, temperature=params.temperature
    )
    async with closing(stream) as pieces:
        async for piece in pieces:
            yield piece


class ScriptedModelParams(msgspec.Struct, forbid_unknown_fields=True):
    #: The answer; absent, the node echoes its input.
    reply: str | None = None
    #: Seconds to wait before each piece.
    delay: Annotated[float, msgspec.Meta(ge=0)] = 0


async def _scripted_model(
    params: ScriptedModelParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    answer = params.reply if params.reply is not None else await incoming.text()
    for piece in split_words(answer):
        if params.delay > 0:
            await asyncio.sleep(params.delay)
        yield piece


class TranslateParams(msgspec.Struct, forbid_unknown_fields=True):
    target_language: Annotated[str, msgspec.Meta(min_length=1)]


async def _translate(
    params: TranslateParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    text = await incoming.text()
    yield await context.services.translator.translate(text, params.target_language)


CHAT_INPUT_NODE = NodeType(CHAT_INPUT, NoParams, _chat_input)
CHAT_OUTPUT_NODE = NodeType(CHAT_OUTPUT, NoParams, _chat_output)
PROMPT_TEMPLATE_NODE = NodeType(
    "PromptTemplate",
    PromptTemplateParams,
    _prompt_template,
    system_prompt=lambda p: p.system,
    reads_history=True,
)
CHAT_MODEL_NODE = NodeType("ChatModel", ChatModelParams, _chat_model, reads_history=True)
SCRIPTED_MODEL_NODE = NodeType("ScriptedModel", ScriptedModelParams, _scripted_model)
TRANSLATE_NODE = NodeType("Translate", TranslateParams, _translate)

BUILTIN_NODE_TYPES: tuple[NodeType[Any], ...] = (
    CHAT_INPUT_NODE,
    PROMPT_TEMPLATE_NODE,
    CHAT_MODEL_NODE,
    SCRIPTED_MODEL_NODE,
    TRANSLATE_NODE,
    CHAT_OUTPUT_NODE,
)


def default_registry() -> NodeRegistry:
    registry = NodeRegistry()
    for node_type in BUILTIN_NODE_TYPES:
        registry.register(node_type)
    return registry
