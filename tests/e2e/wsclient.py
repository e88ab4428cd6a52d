"""A small WebSocket client for the e2e tests, bounded in time everywhere."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

TIMEOUT = 10.0


@asynccontextmanager
async def opened(url: str, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    async with connect(url, open_timeout=TIMEOUT, close_timeout=2, **kwargs) as socket:
        yield socket


async def close_of(url: str, **kwargs: Any) -> tuple[int, str]:
    """Connect, expect the server to close without sending a frame; its code and reason."""
    async with opened(url, **kwargs) as socket:
        try:
            async with asyncio.timeout(TIMEOUT):
                frame = await socket.recv()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame"
            return closed.rcvd.code, closed.rcvd.reason
        raise AssertionError(f"expected a close, got a frame: {frame!r}")


async def send(socket: ClientConnection, frame: dict[str, Any] | str) -> None:
    await socket.send(frame if isinstance(frame, str) else json.dumps(frame))


async def recv(socket: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        return json.loads(await socket.recv())  # type: ignore[no-any-return]


async def ask(socket: ClientConnection, frame: dict[str, Any] | str) -> dict[str, Any]:
    await send(socket, frame)
    return await recv(socket)


async def until(socket: ClientConnection, type_: str, limit: int = 2000) -> list[dict[str, Any]]:
    """Every frame up to and including the first of ``type_``."""
    frames = []
    for _ in range(limit):
        frame = await recv(socket)
        frames.append(frame)
        if frame.get("type") == type_:
            return frames
    raise AssertionError(f"no {type_!r} frame in {limit} frames")
