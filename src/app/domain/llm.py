"""What the domain says to a chat model."""

from __future__ import annotations

import msgspec


class ModelMessage(msgspec.Struct, frozen=True):
    """One message of a conversation sent to a chat model."""

    role: str  # "system" | "user" | "assistant"
    content: str
