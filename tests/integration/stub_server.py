"""A tiny HTTP/1.1 server on 127.0.0.1 for adapter tests, over a real socket.

Each connection serves one request with the test's handler, which writes the response by hand
through :class:`Reply` (so that a test can hang, break a stream off, or watch for the client
hanging up). Every wait is bounded so that a broken test fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

_READ_TIMEOUT = 5.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Reply:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def json(self, status: int, body: object) -> None:
        payload = json.dumps(body).encode()
        await self._head(status, "application/json", {"Content-Length": str(len(payload))})
        self._writer.write(payload)
        await self._writer.drain()

    async def start_stream(self, status: int = 200) -> None:
        await self._head(status, "text/event-stream", {"Transfer-Encoding": "chunked"})

    async def chunk(self, data: str) -> None:
        encoded = data.encode()
        self._writer.write(b"%x\r\n%s\r\n" % (len(encoded), encoded))
        await self._writer.drain()

    async def end_stream(self) -> None:
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    async def hung_up_within(self, seconds: float) -> bool:
        """Whether the client closes the connection within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                return await self._reader.read(1) == b""
        except TimeoutError:
            return False

    async def _head(self, status: int, content_type: str, headers: dict[str, str]) -> None:
        lines = [f"HTTP/1.1 {status} Stub", f"Content-Type: {content_type}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self._writer.drain()


Handler = Callable[[Request, Reply], Awaitable[None]]


class StubServer:
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.requests: list[Request] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> StubServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        # Python 3.11's Server.close() leaves open connections alone: end their handlers.
        for task in self._tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 2)
        await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                request = await _read_request(reader)
            self.requests.append(request)
            await self._handler(request, Reply(reader, writer))
        finally:
            writer.close()


async def _read_request(reader: asyncio.StreamReader) -> Request:
    # The reader's 64 KiB limit bounds the head.
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Request(method, path, headers, body)


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
