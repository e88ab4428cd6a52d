"""flowgate's extension API: everything a feature or a node type may import, and nothing else.

An extension package imports from this module only. The names in ``__all__`` are supported:
they change only with a note in ``docs/extending.md`` (a test compares the two). Every other
module under ``app`` is internal and may change in any release.

Features (entry point group ``flowgate.features``, naming a :data:`FeatureFactory`):

- :class:`Feature`: the base class; :class:`FeatureServices`: what its factory gets;
  :class:`FeatureConnection`: what its hooks get (a read-only view of the socket, plus
  ``send``); :class:`Admission` and :class:`User`: who is on it and for which flow and chat;
  :class:`FeatureError`: the seed's ``{"error": "..."}`` reply.

Node types (entry point group ``flowgate.nodes``, naming a :class:`NodeType` or a callable
returning a list of them):

- :class:`NodeType`, :class:`NoParams`; what ``run(params, incoming, context)`` gets:
  :class:`Incoming`, :class:`NodeContext`, :class:`TurnInput`, :class:`RuntimeServices`;
  :class:`ModelMessage` to call ``context.services.chat_model``; :func:`split_words`.

Frames: :func:`encode` (a reply's bytes), :func:`error_frame` and :class:`ErrorCode`.

Errors: :class:`DomainError` and the ones an extension raises or catches: :class:`ModelError`,
:class:`StoreUnavailable`, :class:`InvalidGraph`.

Settings: :func:`extension_settings` reads an extension's own environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import msgspec

from app.domain.admission import Admission
from app.domain.errors import DomainError, InvalidGraph, ModelError, StoreUnavailable
from app.domain.features.base import Feature, FeatureError, FeatureFactory, FeatureServices
from app.domain.frames import ErrorCode, encode
from app.domain.frames import error as error_frame
from app.domain.graph.context import Incoming, NodeContext, RuntimeServices, TurnInput
from app.domain.graph.nodes import NodeType, NoParams, split_words
from app.domain.llm import ModelMessage
from app.domain.rejections import Rejection
from app.domain.users import User
from app.infra.settings import SettingsError

if TYPE_CHECKING:
    from app.domain.connection import Connection

__all__ = [
    "Admission",
    "DomainError",
    "ErrorCode",
    "Feature",
    "FeatureConnection",
    "FeatureError",
    "FeatureFactory",
    "FeatureServices",
    "Incoming",
    "InvalidGraph",
    "ModelError",
    "ModelMessage",
    "NoParams",
    "NodeContext",
    "NodeType",
    "Rejection",
    "RuntimeServices",
    "SettingsError",
    "StoreUnavailable",
    "TurnInput",
    "User",
    "encode",
    "error_frame",
    "extension_settings",
    "split_words",
]


class FeatureConnection(Protocol):
    """One admitted socket, as a feature sees it: who is on it, and how to reply.

    Annotate ``handle``, ``opened`` and ``closed`` with this type: it is the part of the
    connection that is supported. The socket is not the feature's: it writes only through
    :meth:`send` (flowgate is the socket's single writer, and bounds what waits), and closes it
    only when it must (:meth:`close`).
    """

    @property
    def id(self) -> int:
        """Unique among this process's connections: the key of per-connection state."""
        ...

    @property
    def admission(self) -> Admission:
        """The user, the flow, the graph the connection runs, ``chat_id`` and ``version_id``."""
        ...

    @property
    def user(self) -> User:
        """The user, as the latest token (an ``auth`` frame may refresh it) describes them."""
        ...

    @property
    def chat_id(self) -> str | None:
        """The client's ``chat_id``; None on a debug connection (which stores nothing)."""
        ...

    @property
    def closed(self) -> bool:
        """True once the socket has gone or is being closed: stop working for it."""
        ...

    @property
    def locale(self) -> str:
        """``en`` or ``zh`` (``FLOWGATE_LOCALE``), for messages meant for people."""
        ...

    async def send(self, data: bytes) -> bool:
        """Write one text frame (UTF-8 JSON, e.g. :func:`encode`'s) after what already waits.

        False if the socket has gone (nothing to do but stop). Never raises for a gone peer.
        A client that cannot keep up is closed with 4008 ``slow consumer`` by flowgate.
        """
        ...

    async def close(self, rejection: Rejection) -> None:
        """Close the socket with the rejection's code and reason, after what already waits.

        Only when the feature must (e.g. ``Rejection.INTERNAL``, 1011, when its own state
        for the connection is broken); a bad request gets a reply or an error frame instead.
        """
        ...


if TYPE_CHECKING:

    def _connection_is_a_feature_connection(connection: Connection) -> FeatureConnection:
        return connection  # mypy checks the view against the real connection


S = TypeVar("S", bound=msgspec.Struct)

_SEQUENCES = (
    msgspec.inspect.ListType,
    msgspec.inspect.TupleType,
    msgspec.inspect.VarTupleType,
    msgspec.inspect.SetType,
    msgspec.inspect.FrozenSetType,
)


def extension_settings(
    prefix: str, settings_type: type[S], environ: Mapping[str, str] | None = None
) -> S:
    """An extension's settings, read from its own environment variables.

    Each field of the msgspec Struct ``settings_type`` is read from ``{prefix}{FIELD}`` (the
    field's name upper-cased: ``prefix="ACME_"``, field ``api_key`` -> ``ACME_API_KEY``); an
    unset or empty variable leaves the field's default. Values are converted to the field's
    type (``"3"`` -> 3, ``"true"`` -> True); a list, tuple or set field is comma separated.
    A missing required field or a bad value raises :class:`SettingsError` naming the variable,
    so that, called from the feature's factory or a node-type entry point, it stops the server
    at start-up rather than mid-turn. ``environ`` defaults to ``os.environ``.
    """
    environ = os.environ if environ is None else environ
    info = msgspec.inspect.type_info(settings_type)
    assert isinstance(info, msgspec.inspect.StructType)
    raw: dict[str, Any] = {}
    for field in info.fields:
        variable = prefix + field.name.upper()
        value = environ.get(variable)
        if value in (None, ""):
            if field.required:
                raise SettingsError(f"{variable} is required")
            continue
        assert value is not None
        if _is_sequence(field.type):
            raw[field.encode_name] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            raw[field.encode_name] = value
    try:
        return msgspec.convert(raw, settings_type, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(_name_the_variable(prefix, info, str(exc))) from None


def _is_sequence(field_type: msgspec.inspect.Type) -> bool:
    if isinstance(field_type, msgspec.inspect.UnionType):
        return any(_is_sequence(member) for member in field_type.types)
    return isinstance(field_type, _SEQUENCES)


def _name_the_variable(prefix: str, info: msgspec.inspect.StructType, message: str) -> str:
    # msgspec says "... - at `$.api_key`": name the environment variable instead.
    for field in info.fields:
        path = f"`$.{field.encode_name}"
        if path in message:
            variable = prefix + field.name.upper()
            return message.split(" - at ")[0] + f" - in {variable}"
    return message
