"""A Translator that asks the chat model for the translation."""

from __future__ import annotations

from app.domain.llm import ModelMessage
from app.domain.ports import ChatModel

_SYSTEM = (
    "You are a translator. Translate the user's text into the language whose code is "
    "{target_language}. Answer with the translation only, without notes or quotes."
)


class ChatModelTranslator:
    def __init__(self, chat_model: ChatModel) -> None:
        self._chat_model = chat_model

    async def translate(self, text: str, target_language: str) -> str:
        messages = [
            ModelMessage("system", _SYSTEM.format(target_language=target_language)),
            ModelMessage("user", text),
        ]
        return "".join([piece async for piece in self._chat_model.stream(messages)])
