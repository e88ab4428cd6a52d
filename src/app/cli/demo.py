"""``app demo`` (a demo flow, online, and a token to chat with it) and ``app chat`` (a client)."""

from __future__ import annotations

import asyncio
import sys
import uuid

import click
import msgspec

from app.cli.common import container, run_async
from app.infra.auth.token_issuer import issue_token

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
    """Create the demo flow (online) and print a token, its URL and a command to chat."""
    async with container() as c:
        flow = await c.catalog.create(
            name="demo", owner_id=DEMO_OWNER, graph=DEMO_GRAPH, online=True
        )
        token = issue_token(c.settings.jwt, user_id=user_id, name=user_id, ttl_seconds=86400)
    chat_url = f"{url}/api/v1/chat/{flow.id}?t={token}&chat_id=demo-{uuid.uuid4().hex[:8]}"
    click.echo(f"flow:  {flow.id}")
    click.echo(f"token: {token}")
    click.echo(f"url:   {chat_url}")
    click.echo(f"chat:  uv run app chat '{chat_url}' --message 'Hello flowgate'")


class _Frame(msgspec.Struct):
    type: str | None = None
    message: str | None = None
    status: str | None = None
    code: str | None = None


_decode = msgspec.json.Decoder(_Frame).decode


@click.command(name="chat")
@click.argument("url")
@click.option("--message", "-m", default=None, help="Send this and exit after the answer.")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait per answer.")
def chat(url: str, message: str | None, timeout: float) -> None:
    """Chat over a flowgate WebSocket URL; answers stream to stdout."""
    try:
        asyncio.run(_chat(url, message, timeout))
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot chat: {exc}") from None


async def _chat(url: str, message: str | None, timeout: float) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async with connect(url, open_timeout=10) as socket:
        lines = [message] if message is not None else (line.rstrip("\n") for line in sys.stdin)
        for line in lines:
            if not line:
                continue
            await socket.send(msgspec.json.encode({"inputs": {"input": line}}).decode())
            try:
                async with asyncio.timeout(timeout):
                    await _print_answer(socket)
            except ConnectionClosed as closed:
                raise click.ClickException(
                    f"closed by the server: {closed.rcvd.code if closed.rcvd else ''} "
                    f"{closed.rcvd.reason if closed.rcvd else ''}"
                ) from None


async def _print_answer(socket: object) -> None:
    async for raw in socket:  # type: ignore[attr-defined]
        frame = _decode(raw)
        if frame.type == "stream":
            click.echo(frame.message, nl=False)
        elif frame.type == "error":
            click.echo(f"\n[error {frame.code}] {frame.message}", err=True)
        elif frame.type == "end":
            click.echo(f"\n[{frame.status}]", err=True)
        elif frame.type == "close":
            return
