"""ChatModel adapters: an OpenAI-compatible HTTP provider, and a scripted one for development."""

from app.infra.llm.openai import OpenAIChatModel
from app.infra.llm.scripted import ScriptedChatModel

__all__ = ["OpenAIChatModel", "ScriptedChatModel"]
