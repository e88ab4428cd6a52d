"""A Translator over a LibreTranslate server: ``POST /translate``."""

from __future__ import annotations

import httpx
import msgspec

from app.domain.errors import ModelError


class _Request(msgspec.Struct, omit_defaults=True):
    q: str
    source: str
    target: str
    format: str
    # Omitted when None: a server that needs no key is sent none.
    api_key: str | None = None


class _Reply(msgspec.Struct):
    translated_text: str = msgspec.field(name="translatedText")


class _ErrorReply(msgspec.Struct):
    error: str


_encode_request = msgspec.json.Encoder().encode
_decode_reply = msgspec.json.Decoder(_Reply).decode
_decode_error = msgspec.json.Decoder(_ErrorReply).decode


class LibreTranslateTranslator:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/translate"
        self._host = httpx.URL(base_url).host
        self._api_key = api_key
        self._timeout = timeout
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient()

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def translate(self, text: str, target_language: str) -> str:
        body = _Request(
            q=text, source="auto", target=target_language, format="text", api_key=self._api_key
        )
        try:
            response = await self._client.post(
                self._url,
                content=_encode_request(body),
                headers={"Content-Type": "application/json"},
                timeout=self._timeout,
            )
        except httpx.TimeoutException:
            raise ModelError(
                f"the translation service ({self._host}) did not answer within {self._timeout:g} s"
            ) from None
        except httpx.HTTPError:
            raise ModelError(f"cannot reach the translation service ({self._host})") from None
        if response.status_code >= 400:
            raise ModelError(self._http_error(response))
        try:
            return _decode_reply(response.content).translated_text
        except msgspec.DecodeError:
            raise ModelError(
                f"the translation service ({self._host}) sent an answer without translatedText"
            ) from None

    def _http_error(self, response: httpx.Response) -> str:
        message = f"the translation service ({self._host}) answered HTTP {response.status_code}"
        try:
            detail = _decode_error(response.content).error
        except msgspec.DecodeError:
            return message
        if self._api_key:
            detail = detail.replace(self._api_key, "[redacted]")
        return f"{message}: {detail}"
