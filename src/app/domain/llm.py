"""What the domain says to a chat model."""

from __future__ import annotations

import msgspec


class ModelMessage(msgspec.Struct, frozen=True):
    role: str  # "system" | "user" | "assistant"
    content: str
