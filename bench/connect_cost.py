"""What one connect costs flowgate's process, counted so that a change of a few per cent shows
(issue 10: B2's fixed-rate p99 needs a cheaper connect, and timings on the benchmark's VMs drift
by a third within minutes).

    python -m bench.connect_cost                  # CPU µs per connect cycle, in this process
    python -m bench.connect_cost --echo           # the same for the bench's echo app (the floor)
    python -m bench.connect_cost --without jwt,litestar     # parts replaced by no-ops
    valgrind --tool=callgrind --instr-atstart=no \\
        python -m bench.connect_cost --callgrind  # instructions per cycle (repeatable to ~1.5 %)

flowgate's ASGI app runs in this process on PostgreSQL + Redis (a database and a key prefix of
its own, dropped at the end; 127.0.0.1:5432 user postgres, 127.0.0.1:6379): N connect cycles
one after another (connect, admission to a new chat, one compute round trip, close), each
driven through the app's ASGI callable by a scripted client in place of uvicorn and its socket.
What is counted is the app's, the drivers' and the event loop's work, not the handshake's (the
echo pays that too). One after another, each claim's proof and each release go alone (the
benchmark's concurrent connects share them), so those two weigh more here than in B2.

With ``--callgrind`` valgrind's instrumentation is switched on only around the cycles
(``callgrind_control``); the count includes the process's background ticks during them (health
checks, the flow cache's refresh: ~1.5 million instructions a second of wall time under
valgrind, so a part that makes a cycle wait longer also counts a little background).

``--without`` (measurement only; the cycle must still succeed): ``jwt`` (the token is taken for
its user unchecked), ``litestar`` (the handler called with a WebSocket made by hand: Litestar's
routing, middleware and parameter parsing left out), ``proof`` (a claim taken for durable),
``count`` (the Redis connection count), ``claim`` (the chat claim statement), ``lookup`` (the
Redis owner cache).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from bench.servers import REDIS_URL, _pg_admin, _redis_delete_prefix, create_flow, run_cli

COMPUTE = '{"action": "compute", "data": 3}'
SECRET = "connect-cost-" + "x" * 40
WARM_UP = 50


def _scope(path: str, query: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"upgrade", b"websocket"),
            (b"connection", b"Upgrade"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13"),
        ],
        "subprotocols": [],
        "state": {},
    }


async def _cycle(app: Any, path: str, query: str) -> None:
    """Connect, one compute frame, close: as a client would over uvicorn."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    events.put_nowait({"type": "websocket.connect"})
    replies: list[str] = []

    async def receive() -> dict[str, Any]:
        return await events.get()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.accept":
            events.put_nowait({"type": "websocket.receive", "text": COMPUTE})
        elif message["type"] == "websocket.send":
            replies.append(message.get("text") or "")
            events.put_nowait({"type": "websocket.disconnect", "code": 1000})
        elif message["type"] == "websocket.close":
            events.put_nowait({"type": "websocket.disconnect", "code": 1000})

    await app(_scope(path, query), receive, send)
    if not replies or '"result":9' not in replies[0]:
        raise RuntimeError(f"the cycle did not get its compute reply: {replies}")


def _without(parts: set[str], tokens: dict[str, str]) -> Callable[[Any], Any]:
    """Replace the named parts by no-ops (see the module docstring); the app wrapper."""
    from app.domain.users import User

    if "jwt" in parts:
        from app.infra.auth.jwt_verifier import JWTVerifier

        users = {token: User(id=user) for token, user in tokens.items()}

        async def verify(self: Any, token: str) -> User:
            return users[token]

        JWTVerifier.verify = verify  # type: ignore[method-assign]
    if "proof" in parts:
        from app.infra.sql.claims import ChatClaims

        def proven(self: Any, owner: Any, durable: asyncio.Future[bool], retries: int) -> None:
            durable.set_result(True)

        ChatClaims._prove_later = proven  # type: ignore[method-assign]
    if "claim" in parts:
        from app.infra.sql.claims import ChatClaims

        async def claim(self: Any, session: Any) -> Any:
            return session

        ChatClaims.claim = claim  # type: ignore[method-assign]
    if "count" in parts:
        from app.infra.redis.counter import RedisConnectionCounter

        async def acquire(self: Any, user_id: str, slot: str, limit: int) -> bool:
            return True

        async def release(self: Any, user_id: str, slot: str) -> None:
            return None

        RedisConnectionCounter.acquire = acquire  # type: ignore[method-assign]
        RedisConnectionCounter.release = release  # type: ignore[method-assign]
    if "lookup" in parts:
        from app.infra.redis.owners import RedisChatOwners

        def lookup(self: Any, chat_id: str) -> asyncio.Future[None]:
            unknown: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            unknown.set_result(None)
            return unknown

        RedisChatOwners.lookup = lookup  # type: ignore[method-assign,assignment]
        RedisChatOwners.remember = lambda self, session: None  # type: ignore[method-assign]

    def wrap(app: Any) -> Any:
        if "litestar" not in parts:
            return app
        from litestar import WebSocket

        from app.api.chat_socket import chat_endpoint

        handler = chat_endpoint.fn

        async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "websocket":
                return await app(scope, receive, send)  # type: ignore[no-any-return]
            segments = scope["path"].split("/")  # /api/v1/chat/{flow_id}[/{feature}]
            scope["path_params"] = {"flow_id": segments[4]}
            if len(segments) > 5:
                scope["path_params"]["feature"] = segments[5]
            scope["app"] = scope["litestar_app"] = app
            await handler(WebSocket(scope, receive, send))  # type: ignore[arg-type]
            return None

        return bare

    return wrap


async def measure(n: int, *, echo: bool, without: set[str], callgrind: bool, flow_id: str) -> None:
    from app.api.asgi import create_app

    now = int(time.time())
    tokens = {
        jwt.encode({"sub": f"u{i}", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256"): (
            f"u{i}"
        )
        for i in range(100)
    }
    token_list = list(tokens)
    if echo:
        from bench.echo_app import app as echo_app

        app: Any = echo_app
    else:
        app = _without(without, tokens)(create_app())
    lifespan: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    lifespan.put_nowait({"type": "lifespan.startup"})
    life = asyncio.ensure_future(
        app(
            {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}},
            lifespan.get,
            lifespan_send,
        )
    )
    await asyncio.wait_for(started.wait(), 60)
    run = uuid.uuid4().hex[:8]
    path = f"/api/v1/chat/{flow_id}/compute"

    async def cycles(count: int, label: str) -> None:
        for i in range(count):
            await _cycle(app, path, f"t={token_list[i % 100]}&chat_id={run}-{label}-{i}")

    await cycles(WARM_UP, "warm")
    await asyncio.sleep(0.2)
    if callgrind:
        _instrument("on")
    wall, cpu = time.perf_counter(), time.process_time()
    await cycles(n, "measured")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if callgrind:
        _instrument("off")
    print(f"{n} cycles: {cpu / n * 1e6:.0f} µs CPU, {wall / n * 1e6:.0f} µs wall each")
    lifespan.put_nowait({"type": "lifespan.shutdown"})
    await asyncio.wait_for(life, 30)


def _instrument(state: str) -> None:
    """Switch valgrind's instrumentation of this process (callgrind_control answers once done)."""
    subprocess.run(
        ["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300, help="measured connect cycles")
    parser.add_argument("--echo", action="store_true", help="the bench's echo app instead")
    parser.add_argument("--without", default="", help="parts replaced by no-ops, comma-separated")
    parser.add_argument("--callgrind", action="store_true", help="running under callgrind")
    args = parser.parse_args()
    parts = {part for part in args.without.split(",") if part}
    unknown = parts - {"jwt", "litestar", "proof", "claim", "count", "lookup"}
    if unknown:
        parser.error(f"--without: unknown part(s) {', '.join(sorted(unknown))}")
    run = uuid.uuid4().hex[:8]
    database, prefix = f"flowgate_connect_cost_{run}", f"flowgate-connect-cost-{run}:"
    env = dict(os.environ) | {
        "FLOWGATE_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
        "FLOWGATE_REDIS_URL": REDIS_URL,
        "FLOWGATE_REDIS_PREFIX": prefix,
        "FLOWGATE_JWT_SECRET": SECRET,
        "FLOWGATE_MAX_CONNECTIONS_PER_USER": "100000",
        "FLOWGATE_MESSAGES_PER_SECOND": "1000000",
        "FLOWGATE_LOG_LEVEL": "WARNING",
    }
    _pg_admin(f'CREATE DATABASE "{database}"')
    try:
        run_cli(env, "database", "upgrade", "--no-prompt")
        with tempfile.TemporaryDirectory() as workdir:
            flow_id = create_flow(env, Path(workdir) / "graph.json", "connect-cost")
        os.environ.update(env)  # the app in this process reads its settings from here
        import uvloop

        uvloop.run(
            measure(
                args.n, echo=args.echo, without=parts, callgrind=args.callgrind, flow_id=flow_id
            )
        )
    finally:
        _pg_admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        _redis_delete_prefix(prefix)


if __name__ == "__main__":
    sys.exit(main())
