"""``Shout``: a node type that upper-cases the text flowing through it, piece by piece."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from app.extend import Incoming, NodeContext, NodeType


class ShoutParams(msgspec.Struct, forbid_unknown_fields=True):
    #: End the text with ``!``.
    exclaim: bool = False


async def shout(
    params: ShoutParams, incoming: Incoming, context: NodeContext
) -> AsyncIterator[str]:
    # Streams: each piece goes on as soon as it comes in, so a model feeding Shout still
    # streams to the client. (``await incoming.text()`` would wait for the whole text.)
    async for piece in incoming:
        yield piece.upper()
    if params.exclaim:
        yield "!"


SHOUT = NodeType("Shout", ShoutParams, shout)
