"""The seed's example translation, kept as it was: it marks the text, it does not translate it."""

from __future__ import annotations

_MARKERS = {"en": "Translated to English: ", "zh": "翻译为中文: "}


class MarkerTranslator:
    async def translate(self, text: str, target_language: str) -> str:
        marker = _MARKERS.get(target_language)
        return "Unsupported language" if marker is None else f"{marker}{text}"
