"""Translator adapters: the seed's marker, the chat model, and LibreTranslate."""

from app.infra.translate.libretranslate import LibreTranslateTranslator
from app.infra.translate.llm import ChatModelTranslator
from app.infra.translate.marker import MarkerTranslator

__all__ = ["ChatModelTranslator", "LibreTranslateTranslator", "MarkerTranslator"]
