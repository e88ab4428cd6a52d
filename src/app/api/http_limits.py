"""How much of a request the HTTP layer reads, and an answer for every request it refuses.

``app run`` serves with uvicorn's h11 parser (httptools has no bound on a request line: it
would buffer whatever comes) and hands WebSocket upgrades to websockets' sans-I/O protocol,
which parses the handshake again with its own bounds. The bounds, set here explicitly:

- the request head (request line and headers together) at most
  :data:`MAX_REQUEST_HEAD` bytes, else h11 answers ``400`` and closes;
- any one line of a WebSocket handshake at most :data:`MAX_LINE_LENGTH` bytes, else ``414``
  (the request line) or ``431`` (a header), and at most :data:`MAX_HEADERS` headers, else
  ``431``.

:class:`WebSocketProtocol` is uvicorn's websockets-sansio protocol with one fix: when
websockets refuses a handshake request before it is whole (too long a line, too many headers,
not HTTP at all), it queues its answer, and uvicorn, which writes only once a request is
parsed, never sent it nor closed the connection: the client hung until its own timeout.
"""

from __future__ import annotations

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets import http11

#: h11's ``max_incomplete_event_size``: the request line and headers of one request.
MAX_REQUEST_HEAD = 16 * 1024
#: One line of a WebSocket handshake (websockets' default, set so that it is stated).
MAX_LINE_LENGTH = 8 * 1024
#: Headers of a WebSocket handshake (websockets' default).
MAX_HEADERS = 128

# websockets reads these module globals each time it parses a request.
http11.MAX_LINE_LENGTH = MAX_LINE_LENGTH
http11.MAX_NUM_HEADERS = MAX_HEADERS

_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 23\r\n"
    b"Connection: close\r\n"
    b"\r\n"
    b"Invalid HTTP request.\r\n"
)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, answering every handshake it refuses."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if (
            not self.handshake_initiated
            and not self.close_sent
            and self.conn.handshake_exc is not None
        ):
            self._refuse()

    def _refuse(self) -> None:
        # websockets' own answer (414 or 431 with its reason), or a 400 where it has none
        # (what came was not an HTTP request: websockets just stops reading).
        answer = b"".join(self.conn.data_to_send()) or _BAD_REQUEST
        self.close_sent = True
        self.handshake_complete = True
        self.transport.write(answer)
        self.transport.close()
