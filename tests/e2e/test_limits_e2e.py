"""Limits over real sockets: open connections per user counted across two processes.

(The slow-consumer close, 4008, is tested over fakes in tests/unit/test_durable_turns.py: over
a real uvicorn socket, a client that reads nothing made uvicorn buffer several MB without
ever making the ASGI send wait, so the connection's queue never fills; see the note in
README's guarantees.)"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import delete_prefix
from tests.e2e.conftest import Server, make_server, scripted_graph
from tests.e2e.wsclient import ask, close_of, opened

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def pair(
    pg_database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Server]]:
    prefix = f"flowgate-test:{uuid.uuid4().hex}:"
    one = make_server(
        tmp_path_factory.mktemp("limits-a"),
        database_url=pg_database_url,
        redis_url=redis_url,
        redis_prefix=prefix,
        max_connections_per_user="2",
    )
    two = make_server(tmp_path_factory.mktemp("limits-b"))
    two.env = dict(one.env)
    one.start()
    two.start()
    yield one, two
    one.stop()
    two.stop()
    delete_prefix(redis_url, prefix)


@pytest.mark.integration
async def test_connections_per_user_are_counted_across_processes(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    flow = a.create_flow("counted", scripted_graph("hi"))
    token = a.token("counted")

    def url(server: Server) -> str:
        return f"{server.ws}/api/v1/chat/{flow}?t={token}&chat_id=c-{uuid.uuid4().hex[:8]}"

    async with opened(url(a)) as first, opened(url(b)) as second:
        assert await ask(first, {"action": "ping"}) == {"type": "pong"}
        assert await ask(second, {"action": "ping"}) == {"type": "pong"}
        # The third, on either process, is over the limit of 2.
        assert await close_of(url(a)) == (1013, "too many connections")
        assert await close_of(url(b)) == (1013, "too many connections")
    # Closed sockets no longer count, on either process.
    for _ in range(50):
        try:
            async with opened(url(b)) as again:
                assert await ask(again, {"action": "ping"}) == {"type": "pong"}
                break
        except AssertionError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("a closed socket still counts")
