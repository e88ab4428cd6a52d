"""The feature contract and the registry of named features.

A feature declares the request type of each action it serves (msgspec Structs; ``None`` is the
frame without an ``action``) and a handler. Decoders are built once, when the feature is made.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from app.domain.connection import Connection
from app.domain.frames import known_action_decoder
from app.domain.graph import GraphRuntime
from app.domain.ports import ChatModel, ChatRepository, FlowRepository, Translator


class FeatureError(msgspec.Struct):
    """The seed's reply to a request a feature cannot serve: ``{"error": "..."}``."""

    error: str


class UnknownAction(Exception):
    pass


class Feature(ABC):
    """A named handler of the frames of ``WS /api/v1/chat/{flow_id}/{name}``.

    Subclass it, set :attr:`name` and :attr:`actions`, and implement :meth:`handle`. One
    instance serves every connection of the process: keep per-connection state in a dict keyed
    by ``connection.id`` (and drop it in :meth:`closed`), never on ``self`` alone.

    Before :meth:`handle` is called flowgate has admitted the connection (token, flow, chat,
    connection limit), applied the rate limit, answered ``ping`` and ``auth``, and decoded the
    frame into the action's request type; a frame that fails gets an ``error`` frame
    (``invalid_json``, ``invalid_message`` with the JSON path, ``unknown_action``) and never
    reaches the feature. Calls to :meth:`handle` for one connection come one at a time, in the
    order the frames arrived: the next frame is not read until it returns, so work that takes
    long runs as a task (see ``docs/extending.md``).
    """

    #: The last segment of the URL; unique among the features of a process.
    name: ClassVar[str]
    #: The request type of each action; the key ``None`` serves frames without an ``action``.
    actions: ClassVar[Mapping[str | None, type[msgspec.Struct]]]

    def __init__(self) -> None:
        self._decoders = {
            action: msgspec.json.Decoder(request_type)
            for action, request_type in self.actions.items()
        }
        #: A frame of a known action in one decode (see :func:`known_action_decoder`).
        self.known_action_decoder = known_action_decoder(self.actions)

    def decode(self, action: str | None, raw: bytes | str) -> Any:
        """The request, or :class:`UnknownAction`, or :class:`msgspec.ValidationError`."""
        decoder = self._decoders.get(action)
        if decoder is None:
            raise UnknownAction(action)
        return decoder.decode(raw)

    @abstractmethod
    async def handle(self, connection: Connection, request: Any) -> None:
        """Serve one decoded request; reply through ``connection.send``."""

    async def opened(self, connection: Connection) -> None:
        """Called once the connection is admitted, before its first frame."""

    async def closed(self, connection: Connection) -> None:
        """Called once when the connection has gone, whatever the reason."""

    async def drain(self, timeout: float) -> None:
        """Called on SIGTERM, before the sockets close: finish running work within ``timeout``."""

    async def aclose(self) -> None:
        """Called on shutdown, after every connection has closed."""


@dataclass(frozen=True)
class FeatureServices:
    """What an extension feature's factory (entry point group ``flowgate.features``) gets."""

    flows: FlowRepository
    chats: ChatRepository
    runtime: GraphRuntime
    chat_model: ChatModel
    translator: Translator


#: What a ``flowgate.features`` entry point names: called once per process, at start-up.
FeatureFactory = Callable[[FeatureServices], Feature]


class FeatureRegistry:
    def __init__(self) -> None:
        self._features: dict[str, Feature] = {}

    def register(self, feature: Feature) -> None:
        if feature.name in self._features:
            raise ValueError(f"feature {feature.name!r} is registered twice")
        self._features[feature.name] = feature

    def get(self, name: str) -> Feature | None:
        return self._features.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._features

    def __iter__(self) -> Iterator[Feature]:
        return iter(self._features.values())
