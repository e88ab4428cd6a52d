"""SIGTERM (PROTOCOL.md §6): running turns finish and are stored, then sockets close with 1012."""

from __future__ import annotations

import signal

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import make_server, scripted_graph
from tests.e2e.wsclient import ask, close_of, opened, recv, send

pytestmark = pytest.mark.e2e


async def test_sigterm_drains_then_closes_with_1012(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    server = make_server(tmp_path_factory.mktemp("drain"), shutdown_grace="8")
    server.start()
    try:
        reply = " ".join(f"w{i}" for i in range(20))
        flow = server.create_flow("sd", scripted_graph(reply, delay=0.05))
        token = server.token("sd")
        url = f"{server.ws}/api/v1/chat/{flow}?t={token}&chat_id=drain-1"
        async with opened(url) as ws:
            await send(ws, {"inputs": {"input": "finish me"}})
            assert (await recv(ws))["type"] == "begin"
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            # Draining: new connections are refused, a load balancer is told to stop sending
            # (/ready 503), the running turn goes on.
            assert await close_of(url.replace("drain-1", "drain-2")) == (1012, "service restart")
            ready = httpx.get(f"{server.http}/ready", timeout=5)
            assert ready.status_code == 503 and ready.json()["status"] == "draining"
            frames = []
            with pytest.raises(ConnectionClosed) as closed:
                for _ in range(100):
                    frames.append(await recv(ws))
            end = [f for f in frames if f["type"] == "end"]
            assert end and end[0]["status"] == "complete" and end[0]["message"] == reply
            assert frames[-1]["type"] == "close"
            assert closed.value.rcvd is not None
            assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1012, "service restart")
        # uvicorn re-raises the SIGTERM it handled once shut down: exit by that signal.
        assert server.process.wait(timeout=15) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.log()
        # The answer was stored: a restarted server has it.
        server.start()
        async with opened(url) as ws:
            history = await ask(ws, {"action": "history"})
        assert (history["messages"][0]["message"], history["messages"][0]["status"]) == (
            reply,
            "complete",
        )
    finally:
        server.stop()
