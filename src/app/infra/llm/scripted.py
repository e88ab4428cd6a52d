"""A ChatModel for development without a provider: echoes the last user message word by word."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from app.domain.graph import split_words
from app.domain.llm import ModelMessage


class ScriptedChatModel:
    async def stream(
        self,
        messages: Sequence[ModelMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        for piece in split_words(last):
            yield piece
