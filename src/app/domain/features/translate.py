"""``translate``: the seed's example feature, behind the Translator port."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from app.domain.connection import Connection
from app.domain.errors import ModelError
from app.domain.features.base import Feature, FeatureError
from app.domain.ports import Translator

_encode = msgspec.json.Encoder().encode


class TranslateRequest(msgspec.Struct):
    text: str | None = None
    #: A language tag: BCP 47 tags have at most 35 characters in practice.
    target_language: Annotated[str, msgspec.Meta(min_length=1, max_length=35)] = "en"


class TranslateResult(msgspec.Struct):
    translated_text: str


class TranslateFeature(Feature):
    name = "translate"
    # The seed's frame has no action; ``"action": "translate"`` is accepted too.
    actions: ClassVar = {None: TranslateRequest, "translate": TranslateRequest}

    def __init__(self, translator: Translator) -> None:
        super().__init__()
        self._translator = translator

    async def handle(self, connection: Connection, request: TranslateRequest) -> None:
        reply: TranslateResult | FeatureError
        if not request.text:
            reply = FeatureError(error="No text provided for translation")
        else:
            try:
                translated = await self._translator.translate(request.text, request.target_language)
            except ModelError as exc:
                reply = FeatureError(error=str(exc))
            else:
                reply = TranslateResult(translated_text=translated)
        await connection.send(_encode(reply))
