"""``app demo`` (the demo flow, online, and a token to chat with it) and ``app chat`` (a
terminal client that reports a refused or dropped socket as one line: code and reason)."""

from __future__ import annotations

import asyncio
import shutil
import sys
import threading
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click
import msgspec

from app.cli.common import container, fail, run_async

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

T = TypeVar("T")
#: Seconds ``app chat`` waits for the WebSocket handshake.
OPEN_TIMEOUT = 10.0

DEMO_NAME = "demo"
DEMO_OWNER = "demo"

DEMO_GRAPH = {
    "nodes": [
        {"id": "input", "type": "ChatInput", "params": {}},
        {
            "id": "prompt",
            "type": "PromptTemplate",
            "params": {"template": "You said: {input}. flowgate streams this answer word by word."},
        },
        {"id": "model", "type": "ScriptedModel", "params": {"delay": 0.05}},
        {"id": "output", "type": "ChatOutput", "params": {}},
    ],
    "edges": [
        {"source": "input", "target": "prompt"},
        {"source": "prompt", "target": "model"},
        {"source": "model", "target": "output"},
    ],
}


@click.command(name="demo")
@click.option("--url", default="ws://127.0.0.1:8000", show_default=True, help="The server.")
@click.option("--user-id", default="demo-user", show_default=True)
@run_async
async def demo(url: str, user_id: str) -> None:
    """Create the demo flow once (online; later runs reuse it) and print a token, its URL and
    a command to chat."""
    from app.infra.auth.token_issuer import issue_token

    async with container() as c:
        existing = [
            flow
            for flow in await c.catalog.list()
            if flow.owner_id == DEMO_OWNER and flow.name == DEMO_NAME
        ]
        if existing:
            flow = existing[0]
            if not flow.is_online:
                flow = await c.catalog.set_online(flow.id, True)
        else:
            flow = await c.catalog.create(
                name=DEMO_NAME, owner_id=DEMO_OWNER, graph=DEMO_GRAPH, online=True
            )
        token = issue_token(c.settings.jwt, user_id=user_id, name=user_id, ttl_seconds=86400)
    chat_url = f"{url}/api/v1/chat/{flow.id}?t={token}&chat_id=demo-{uuid.uuid4().hex[:8]}"
    click.echo(f"flow:  {flow.id}")
    click.echo(f"token: {token}")
    click.echo(f"url:   {chat_url}")
    click.echo(f"chat:  {_this_command()} chat '{chat_url}' --message 'Hello flowgate'")


def _this_command() -> str:
    """How to run ``app`` again from here: ``uv run app`` when uv is on PATH, else the script
    that runs now (``.venv/bin/app``), else ``python -m app``."""
    if shutil.which("uv"):
        return "uv run app"
    script = Path(sys.argv[0])
    if script.name == "app":
        try:
            return str(script.resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return f"{sys.executable} -m app"


class _Frame(msgspec.Struct):
    type: str | None = None
    message: str | None = None
    status: str | None = None
    code: str | None = None


_decode = msgspec.json.Decoder(_Frame).decode


@click.command(name="chat")
@click.argument("url")
@click.option("--message", "-m", default=None, help="Send this and exit after the answer.")
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds to wait for each answer.",
)
def chat(url: str, message: str | None, timeout: float) -> None:
    """Chat over a flowgate WebSocket URL; answers stream to stdout, one message per line of
    stdin (or --message). A refused or dropped socket is one line: its close code and reason."""
    from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

    try:
        asyncio.run(_chat(url, message, timeout))
    except ConnectionClosed as closed:
        raise fail(_closed(closed)) from None
    except InvalidURI:
        raise fail("cannot chat: not a ws:// or wss:// URL") from None
    except TimeoutError:
        raise fail(
            f"cannot chat: timed out ({OPEN_TIMEOUT:g} s to connect, {timeout:g} s per answer)"
        ) from None
    except (OSError, WebSocketException) as exc:
        raise fail(f"cannot chat: {exc}") from None


def _closed(closed: Exception) -> str:
    """``closed by the server: 1008 Unauthorized``, or that the connection was lost."""
    received = getattr(closed, "rcvd", None)
    if received is None:
        return "connection lost: the server closed it without a close frame"
    reason = f" {received.reason}" if received.reason else ""
    return f"closed by the server: {received.code}{reason}"


async def _chat(url: str, message: str | None, timeout: float) -> None:
    from websockets.asyncio.client import connect

    # The token travels in the URL; websockets never logs it unless asked to.
    async with connect(url, open_timeout=OPEN_TIMEOUT, close_timeout=5) as socket:
        if message is not None:
            await socket.send(_chat_frame(message))
            async with asyncio.timeout(timeout):
                await _print_frames(socket, None)
            return
        await _interactive(socket, timeout)


async def _interactive(socket: ClientConnection, timeout: float) -> None:
    """Send each line of stdin and print its answer; print what else arrives meanwhile (the
    turns of other sockets of the chat). stdin is read in a daemon thread, so that the socket
    keeps answering the server's heartbeats while nobody types, and a close is seen at once."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\n"))
            loop.call_soon_threadsafe(lines.put_nowait, None)
        except RuntimeError:  # the loop closed first: the chat is over, nobody reads lines
            return

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    turn_over = asyncio.Event()
    receiver = asyncio.create_task(_print_frames(socket, turn_over))
    try:
        while (line := await _unless_closed(lines.get(), receiver)) is not None:
            if not line:
                continue
            turn_over.clear()
            await socket.send(_chat_frame(line))
            async with asyncio.timeout(timeout):
                await _unless_closed(turn_over.wait(), receiver)
    finally:
        receiver.cancel()


async def _unless_closed(awaitable: Awaitable[T], receiver: asyncio.Task[None]) -> T:
    """``awaitable``'s result, unless the socket closes first: then its ``ConnectionClosed``."""
    task = asyncio.ensure_future(awaitable)
    try:
        await asyncio.wait({task, receiver}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if task.done() and not task.cancelled():
        return task.result()
    receiver.result()  # raises the socket's ConnectionClosed
    raise fail("connection ended")


def _chat_frame(text: str) -> str:
    return msgspec.json.encode({"inputs": {"input": text}}).decode()


async def _print_frames(socket: ClientConnection, turn_over: asyncio.Event | None) -> None:
    """Print answers as they stream. Without ``turn_over`` (one ``--message``), return when
    the turn closes, and fail on an error frame that started no turn; with it, set it then and
    go on. A closed socket raises ``ConnectionClosed``, even a clean close: the server ended
    the chat."""
    started = False
    while True:
        frame = _decode(await socket.recv())
        if frame.type == "begin":
            started = True
        elif frame.type == "stream":
            click.echo(frame.message, nl=False)
        elif frame.type == "error":
            if turn_over is None and not started and frame.code != "turn_failed":
                raise fail(f"[error {frame.code}] {frame.message}")
            click.echo(f"\n[error {frame.code}] {frame.message}", err=True)
            if not started and turn_over is not None:
                turn_over.set()
        elif frame.type == "end":
            click.echo()  # the answer's line ends on stdout, its status goes to stderr
            click.echo(f"[{frame.status}]", err=True)
        elif frame.type == "close":
            if turn_over is None:
                return
            started = False
            turn_over.set()
