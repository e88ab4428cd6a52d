"""The ChatModel port over any OpenAI-compatible ``/chat/completions`` endpoint, streaming.

The answer arrives as server-sent events: ``data: {json chunk}`` lines whose
``choices[0].delta.content`` is the next piece, ended by ``data: [DONE]``. Every failure
(cannot connect, no data within the timeout, HTTP error, a stream that breaks off or carries
something that is not a chunk) becomes a :class:`ModelError` whose message is fit for the user
and never holds the API key.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing

import httpx
import msgspec

from app.domain.errors import ModelError
from app.domain.llm import ModelMessage

_MAX_PROVIDER_MESSAGE = 300


class _Request(msgspec.Struct, omit_defaults=True):
    model: str
    messages: Sequence[ModelMessage]
    stream: bool
    temperature: float | None = None


class _ErrorDetail(msgspec.Struct):
    message: str = ""


class _ErrorBody(msgspec.Struct):
    """``{"error": {"message": ..}}`` (OpenAI), ``{"error": ".."}`` or ``{"message": ..}``."""

    error: _ErrorDetail | str | None = None
    message: str | None = None


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta = msgspec.field(default_factory=_Delta)


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    # Some providers report a failure inside a stream that has already begun.
    error: _ErrorDetail | None = None


_encode_request = msgspec.json.Encoder().encode
_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class OpenAIChatModel:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        default_model: str,
        timeout: float,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._host = httpx.URL(base_url).host
        self._api_key = api_key
        self._default_model = default_model
        # httpx applies it to connecting and to every read: the wait between two chunks.
        self._timeout = httpx.Timeout(timeout)
        self._seconds = timeout  # for error messages
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def stream(
        self,
        messages: Sequence[ModelMessage],
        *,
        model: str | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        body = _Request(
            model=model or self._default_model,
            messages=messages,
            stream=True,
            temperature=temperature,
        )
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        request = self._client.build_request(
            "POST",
            self._url,
            content=_encode_request(body),
            headers=headers,
            timeout=self._timeout,
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            raise ModelError(
                f"the model provider ({self._host}) did not answer within {self._seconds:g} s"
            ) from None
        except httpx.HTTPError:
            raise ModelError(f"cannot reach the model provider ({self._host})") from None
        try:
            if response.status_code >= 400:
                await response.aread()
                raise ModelError(self._http_error(response))
            async with aclosing(self._pieces(response)) as pieces:
                async for piece in pieces:
                    yield piece
        except httpx.TimeoutException:
            raise ModelError(
                f"the model provider ({self._host}) sent nothing for {self._seconds:g} s"
            ) from None
        except httpx.HTTPError:
            raise ModelError(f"the model provider's stream ({self._host}) broke off") from None
        finally:
            await response.aclose()

    async def _pieces(self, response: httpx.Response) -> AsyncGenerator[str, None]:
        async for line in response.aiter_lines():
            # Blank lines end an event; ``:`` starts a comment (keep-alive); ``event:`` and
            # ``id:`` lines carry nothing the answer needs.
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                return
            try:
                chunk = _decode_chunk(data)
            except msgspec.DecodeError:
                raise ModelError("the model provider sent data that is not a chat chunk") from None
            if chunk.error is not None:
                raise ModelError(f"the model provider failed: {self._redact(chunk.error.message)}")
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
        raise ModelError("the model provider's stream ended before it was complete")

    def _http_error(self, response: httpx.Response) -> str:
        message = f"the model provider ({self._host}) answered HTTP {response.status_code}"
        detail = _provider_message(response.content)
        return f"{message}: {self._redact(detail)}" if detail else message

    def _redact(self, provider_message: str) -> str:
        """Clip the provider's message and take out the key, which providers may quote."""
        if self._api_key:
            provider_message = provider_message.replace(self._api_key, "[redacted]")
        return _clip(provider_message)


def _provider_message(content: bytes) -> str | None:
    try:
        body = _decode_error(content)
    except msgspec.DecodeError:
        return None
    if isinstance(body.error, _ErrorDetail):
        return body.error.message or None
    return body.error or body.message


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_PROVIDER_MESSAGE else text[:_MAX_PROVIDER_MESSAGE] + "…"
