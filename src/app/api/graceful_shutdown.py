"""SIGTERM, the way PROTOCOL.md §6 asks: stop admitting, let running turns finish for the grace
period, close every socket with 1012 ``service restart``, then let the server stop.

uvicorn on its own closes every WebSocket with a bare 1012 the moment SIGTERM arrives, so a
turn in flight loses its sockets. This wraps the server's SIGTERM handler (uvicorn installs
it before the app's lifespan starts, with ``signal.signal``): flowgate drains first, then hands
the signal on, and uvicorn finds no connection left to cut.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

Drain = Callable[[], Awaitable[None]]


class GracefulShutdown:
    def __init__(self, drain: Drain) -> None:
        self._drain = drain
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self.draining = False

    def install(self) -> None:
        # Signals can only be handled in the main thread (a server in a thread has none).
        if threading.current_thread() is not threading.main_thread():
            return
        self._loop = asyncio.get_running_loop()
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def uninstall(self) -> None:
        if self._loop is not None and signal.getsignal(signal.SIGTERM) == self._on_sigterm:
            signal.signal(signal.SIGTERM, self._previous)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.draining or self._loop is None:
            self._hand_on(signum, frame)  # a second SIGTERM: stop now
            return
        self.draining = True
        logger.info("SIGTERM: draining before shutdown")
        self._loop.call_soon_threadsafe(self._start, signum, frame)

    def _start(self, signum: int, frame: FrameType | None) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._drain_then_hand_on(signum, frame))

    async def _drain_then_hand_on(self, signum: int, frame: FrameType | None) -> None:
        # What lives now (every socket's objects) goes with the process: out of the cyclic
        # collector's sight, so that a full collection over all of it (a third of the
        # drain's CPU in the reconnect storm, on a core the process taking the sockets over
        # may share) cannot fall in the drain. What the drain itself makes is still collected.
        gc.freeze()
        try:
            await self._drain()
        except Exception:
            logger.exception("draining failed; shutting down anyway")
        self._hand_on(signum, frame)

    def _hand_on(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous
        if callable(previous):
            previous(signum, frame)
        else:  # no server handler: restore the default action and take it
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            os.kill(os.getpid(), signum)
