"""``sentiment``: scores a text, and asks the chat model to explain, at
``WS /api/v1/chat/{flow_id}/sentiment``.

- ``{"action": "sentiment", "text": ...}`` -> ``{"label": "positive", "score": 1.0}``: quick,
  answered in ``handle``.
- ``{"action": "explain", "text": ...}`` -> ``{"type": "explanation", "text": ...}`` per piece
  of the model's answer, then ``{"type": "done", "label": ..., "score": ...}``: long, so it runs
  as a task (one at a time per connection; another meanwhile gets a ``busy`` error) and the
  connection's next frames are read meanwhile.
"""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, ClassVar

import msgspec

from app.extend import (
    ErrorCode,
    Feature,
    FeatureConnection,
    FeatureError,
    FeatureServices,
    ModelError,
    ModelMessage,
    encode,
    error_frame,
    extension_settings,
)

POSITIVE = frozenset({"good", "great", "love", "like", "excellent", "happy", "nice", "thanks"})
NEGATIVE = frozenset({"bad", "awful", "hate", "terrible", "sad", "angry", "poor", "broken"})
SYSTEM = "Say in one sentence whether the user's text is positive, negative or neutral, and why."
_WORDS = re.compile(r"[\w']+")

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=10_000)]


class SentimentSettings(msgspec.Struct, frozen=True):
    """Read from ``SENTIMENT_*`` environment variables when the server starts."""

    #: Words that count as positive, beside the built-in ones (``SENTIMENT_POSITIVE=a,b``).
    positive: frozenset[str] = frozenset()
    negative: frozenset[str] = frozenset()
    #: The model ``explain`` asks (``SENTIMENT_MODEL``); unset, the server's default.
    model: str | None = None


class SentimentRequest(msgspec.Struct):
    text: Text


class ExplainRequest(msgspec.Struct):
    text: Text


class Sentiment(msgspec.Struct):
    label: str
    score: float


class Explanation(msgspec.Struct, tag_field="type", tag="explanation"):
    text: str


class Done(msgspec.Struct, tag_field="type", tag="done"):
    label: str
    score: float


class SentimentFeature(Feature):
    name = "sentiment"
    actions: ClassVar = {"sentiment": SentimentRequest, "explain": ExplainRequest}

    def __init__(self, services: FeatureServices, settings: SentimentSettings) -> None:
        super().__init__()
        self._model = services.chat_model
        self._settings = settings
        self._positive = POSITIVE | {w.lower() for w in settings.positive}
        self._negative = NEGATIVE | {w.lower() for w in settings.negative}
        #: The running ``explain`` of each connection, by ``connection.id``.
        self._running: dict[int, asyncio.Task[None]] = {}

    def score(self, text: str) -> Sentiment:
        words = _WORDS.findall(text.lower())
        up = sum(word in self._positive for word in words)
        down = sum(word in self._negative for word in words)
        score = (up - down) / (up + down) if up + down else 0.0
        label = "positive" if score > 0 else "negative" if score < 0 else "neutral"
        return Sentiment(label=label, score=round(score, 3))

    async def handle(
        self, connection: FeatureConnection, request: SentimentRequest | ExplainRequest
    ) -> None:
        if isinstance(request, SentimentRequest):
            await connection.send(encode(self.score(request.text)))
        elif connection.id in self._running:
            await connection.send(error_frame(ErrorCode.BUSY, "an explanation is running"))
        else:
            task = asyncio.get_running_loop().create_task(self._explain(connection, request.text))
            self._running[connection.id] = task
            task.add_done_callback(lambda done: self._forget(connection.id, done))

    async def _explain(self, connection: FeatureConnection, text: str) -> None:
        messages = [ModelMessage("system", SYSTEM), ModelMessage("user", text)]
        stream = self._model.stream(messages, model=self._settings.model)
        try:
            async for piece in stream:
                if not await connection.send(encode(Explanation(text=piece))):
                    return  # the socket has gone: nobody to explain to
        except ModelError as exc:  # written for people by the model's adapter
            await connection.send(encode(FeatureError(error=str(exc))))
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # ends the provider's call now, also when cancelled
                await aclose()
        sentiment = self.score(text)
        await connection.send(encode(Done(label=sentiment.label, score=sentiment.score)))

    def _forget(self, connection_id: int, task: asyncio.Task[None]) -> None:
        if self._running.get(connection_id) is task:
            del self._running[connection_id]

    async def closed(self, connection: FeatureConnection) -> None:
        task = self._running.pop(connection.id, None)
        if task is not None:
            task.cancel()

    async def drain(self, timeout: float) -> None:
        # SIGTERM: running explanations get ``timeout`` seconds, then the sockets close.
        if self._running:
            await asyncio.wait(list(self._running.values()), timeout=timeout)

    async def aclose(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def make_sentiment(services: FeatureServices) -> Feature:
    """The ``flowgate.features`` entry point: called once per server process, at start-up."""
    return SentimentFeature(services, extension_settings("SENTIMENT_", SentimentSettings))
