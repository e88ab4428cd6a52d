"""Every admission row of PROTOCOL.md §3 closes with its code and reason over a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import Server, make_server
from tests.e2e.wsclient import ask, close_of, opened, recv, send

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def zh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = make_server(tmp_path_factory.mktemp("zh"), locale="zh", jwt_leeway="0")
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = make_server(
        tmp_path_factory.mktemp("strict"),
        jwt_leeway="0",
        max_connections_per_user="2",
        allowed_origins="https://app.example",
    )
    running.start()
    yield running
    running.stop()


def chat_url(server: Server, flow_id: str, token: str | None, **query: str) -> str:
    params = dict(query)
    if token is not None:
        params["t"] = token
    suffix = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{server.ws}/api/v1/chat/{flow_id}?{suffix}"


async def test_rule1_unauthorized(strict_server: Server) -> None:
    s = strict_server
    flow = s.create_flow("owner")
    assert await close_of(chat_url(s, flow, None, chat_id="c1")) == (1008, "Unauthorized")
    assert await close_of(chat_url(s, flow, "not.a.jwt", chat_id="c1")) == (1008, "Unauthorized")
    expired = s.token("owner", ttl=1)
    await asyncio.sleep(2.1)
    assert await close_of(chat_url(s, flow, expired, chat_id="c1")) == (1008, "Unauthorized")


async def test_rule1_header_and_cookie_tokens(strict_server: Server) -> None:
    s = strict_server
    flow = s.create_flow("owner")
    token = s.token("owner")
    url = chat_url(s, flow, None, chat_id="hdr")
    async with opened(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
    cookie = {"Cookie": f"access_token_cookie={token}"}
    refused = await close_of(url, additional_headers={**cookie, "Origin": "https://evil.example"})
    assert refused == (1008, "origin not allowed")
    assert await close_of(url, additional_headers=cookie) == (1008, "origin not allowed")
    async with opened(url, additional_headers={**cookie, "Origin": "https://app.example"}) as ws:
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}


async def test_rules_2_to_4(strict_server: Server) -> None:
    s = strict_server
    token = s.token("owner")
    flow = s.create_flow("owner")
    other_flow = s.create_flow("owner")
    offline = s.create_flow("owner", online=False)
    other_version = s.cli(
        "flows",
        "version",
        "add",
        other_flow,
        "--graph",
        s.graph_file({"nodes": [], "edges": []}),
        check=False,
    )
    unknown = f"{s.ws}/api/v1/chat/{flow}/teleport?t={token}&chat_id=c1"
    assert await close_of(unknown) == (1008, "unknown feature")
    assert await close_of(chat_url(s, "no-such-flow", token, chat_id="c1")) == (
        1008,
        "flow deleted",
    )
    assert await close_of(chat_url(s, offline, token, chat_id="c1")) == (1008, "flow not online")
    assert await close_of(chat_url(s, flow, token, chat_id="c1", version_id="424242")) == (
        1008,
        "version not found",
    )
    assert other_version.returncode == 1  # an invalid graph is refused, and says why
    assert "ChatInput" in other_version.stderr

    async with opened(chat_url(s, flow, token, chat_id="owned")) as ws:
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
    intruder = s.token("intruder")
    assert await close_of(chat_url(s, flow, intruder, chat_id="owned")) == (1008, "Forbidden")
    assert await close_of(chat_url(s, other_flow, token, chat_id="owned")) == (1008, "Forbidden")


async def test_rule5_debug(strict_server: Server) -> None:
    s = strict_server
    owner, stranger = s.token("owner"), s.token("stranger")
    admin = s.cli("token", "issue", "--user-id", "boss", "--role", "admin").stdout.strip()
    flow = s.create_flow("owner", online=False)
    assert await close_of(chat_url(s, flow, stranger)) == (1008, "Forbidden")
    assert await close_of(chat_url(s, flow, owner)) == (1013, "build not passed")
    assert s.cli("flows", "build", flow).stdout.strip() == "success"
    for token in (owner, admin):
        async with opened(chat_url(s, flow, token)) as ws:
            assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
    broken = s.cli("flows", "build", flow, "--graph", s.graph_file({"nodes": "x"}), check=False)
    assert broken.returncode == 1 and broken.stdout.strip() == "failure"
    assert await close_of(chat_url(s, flow, owner)) == (1013, "build not passed")


async def test_rule6_too_many_connections(strict_server: Server) -> None:
    s = strict_server
    flow = s.create_flow("busy-user")
    token = s.token("busy-user")
    async with opened(chat_url(s, flow, token, chat_id="a1")) as first:
        async with opened(chat_url(s, flow, token, chat_id="a2")) as second:
            assert await ask(first, {"action": "ping"}) == {"type": "pong"}
            assert await ask(second, {"action": "ping"}) == {"type": "pong"}
            third = await close_of(chat_url(s, flow, token, chat_id="a3"))
            assert third == (1013, "too many connections")
    # Closed connections no longer count.
    await asyncio.sleep(0.3)
    async with opened(chat_url(s, flow, token, chat_id="a3")) as again:
        assert await ask(again, {"action": "ping"}) == {"type": "pong"}


async def test_zh_reasons(zh_server: Server) -> None:
    s = zh_server
    token = s.token("owner")
    offline = s.create_flow("owner", online=False)
    assert await close_of(chat_url(s, "gone", token, chat_id="c1")) == (1008, "该技能已被删除")
    assert await close_of(chat_url(s, offline, token, chat_id="c1")) == (
        1008,
        "当前技能未上线,无法直接对话",
    )
    assert await close_of(chat_url(s, offline, token)) == (1013, "当前编译没通过")
    assert await close_of(chat_url(s, offline, None, chat_id="c1")) == (1008, "Unauthorized")


async def test_store_unreachable_is_service_unavailable(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    s = make_server(tmp_path_factory.mktemp("down"), redis_url="redis://127.0.0.1:1/0")
    s.start()
    try:
        flow = s.create_flow("owner", online=False)
        token = s.token("owner")
        assert await close_of(chat_url(s, flow, token)) == (1013, "service unavailable")
        ready = __import__("httpx").get(f"{s.http}/ready", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"] == {"database": True, "redis": False}
    finally:
        s.stop()


async def test_tokens_never_reach_the_log(strict_server: Server) -> None:
    s = strict_server
    flow = s.create_flow("owner")
    token = s.token("owner")
    async with opened(chat_url(s, flow, token, chat_id="logged")) as ws:
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
    await close_of(chat_url(s, flow, token + "x", chat_id="logged"))
    log = s.log()
    assert "/api/v1/chat/" in log  # the requests were logged...
    assert token not in log and token.split(".")[2] not in log  # ...without the token


async def test_token_expiry_closes_unless_refreshed(strict_server: Server) -> None:
    s = strict_server
    flow = s.create_flow("sleepy")
    short = s.token("sleepy", ttl=2)
    async with opened(chat_url(s, flow, short, chat_id="exp1")) as ws:
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws, timeout=6)
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token expired")
    async with opened(chat_url(s, flow, s.token("sleepy", ttl=2), chat_id="exp2")) as ws:
        await send(ws, {"action": "auth", "token": s.token("sleepy", ttl=3600)})
        await asyncio.sleep(3)
        assert await ask(ws, {"action": "ping"}) == {"type": "pong"}
