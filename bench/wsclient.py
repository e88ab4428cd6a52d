"""A minimal WebSocket client on raw asyncio protocols, cheap enough to load a server.

The ``websockets`` client costs about as much CPU per message as the server it measures, so the
load generator would be the bottleneck. This one does the least a client may do: a fixed
handshake, client frames masked with the all-zero key (allowed by RFC 6455, so the payload is
sent as is and frames can be built once), no extensions offered (no permessage-deflate), and a
parser that only splits server frames. Every wait is bounded by a timeout.

Only ever used against 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import struct

HANDSHAKE = (
    "GET {path} HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "\r\n"
)

_ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A final, masked (zero key) client frame; build once, send many times."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + _ZERO_MASK + payload


CLOSE_FRAME = client_frame(struct.pack("!H", 1000), opcode=0x8)


class ConnectionClosed(ConnectionError):
    """The socket closed (``args[0]`` is the close code); a ConnectionError, so that every
    scenario's ``except ConnectionError`` counts it as a failed connect instead of dying."""


class WSClient(asyncio.Protocol):
    """One connection. ``recv()`` returns the payload of the next text/binary message."""

    __slots__ = (
        "_buf",
        "_closed",
        "_handshake",
        "_messages",
        "_waiter",
        "close_code",
        "pings",
        "transport",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._handshake: asyncio.Future[bytes] | None = None
        self._messages: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self.close_code: int | None = None
        self.pings = 0  # the server's heartbeats answered (B4H counts them)

    # -- public ------------------------------------------------------------------------------

    @classmethod
    async def connect(cls, port: int, path: str, timeout: float = 30.0) -> WSClient:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, client = await loop.create_connection(cls, "127.0.0.1", port)
            client._handshake = loop.create_future()
            client._closed = loop.create_future()
            assert client.transport is not None
            client.transport.write(HANDSHAKE.format(path=path, port=port).encode())
            status = await client._handshake
        if not status.startswith(b"HTTP/1.1 101"):
            client.abort()
            raise ConnectionError(f"handshake refused: {status[:80]!r}")
        return client

    def send(self, frame: bytes) -> None:
        """Send a frame built by :func:`client_frame`."""
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed(self.close_code)
        self.transport.write(frame)

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next message. Without ``timeout`` the caller bounds the wait (each scenario
        runs under one overall deadline, which is cheaper than a timer per message)."""
        if self._messages:
            return self._messages.popleft()
        if self.close_code is not None or self.transport is None:
            raise ConnectionClosed(self.close_code)
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            if timeout is None:
                await waiter
            else:
                async with asyncio.timeout(timeout):
                    await waiter
        finally:
            self._waiter = None
        if self._messages:
            return self._messages.popleft()
        raise ConnectionClosed(self.close_code)

    async def close(self, timeout: float = 10.0) -> None:
        """Send a close frame and wait for the server's close (or the end of the stream)."""
        if self.transport is None:
            return
        if not self.transport.is_closing():
            self.transport.write(CLOSE_FRAME)
        assert self._closed is not None
        try:
            async with asyncio.timeout(timeout):
                await self._closed
        except TimeoutError:
            pass
        finally:
            self.abort()

    async def wait_closed(self, timeout: float) -> int | None:
        """Until the server closes (or the stream ends), at most ``timeout`` s; the close code."""
        if self._closed is not None and not self._closed.done():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._closed)
            except TimeoutError:
                pass
        return self.close_code

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_code is None:
            self.close_code = 1006
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_result(b"connection lost")
        self._wake()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        handshake = self._handshake
        if handshake is not None and not handshake.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            handshake.set_result(bytes(buf[:end]))
            del buf[: end + 4]
        self._parse()

    # -- frames ------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        got = False
        while size - pos >= 2:
            b0 = buf[pos]
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + n:
                break
            opcode = b0 & 0x0F
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            if opcode in (0x1, 0x2, 0x0):
                # Server messages of this benchmark are never fragmented.
                self._messages.append(payload)
                got = True
            elif opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                if self.transport is not None and not self.transport.is_closing():
                    self.transport.write(CLOSE_FRAME)
                    self.transport.close()
                if self._closed is not None and not self._closed.done():
                    self._closed.set_result(None)
                got = True
            elif opcode == 0x9 and self.transport is not None:
                self.pings += 1
                self.transport.write(client_frame(payload, opcode=0xA))
        if pos:
            del buf[:pos]
        if got:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
