"""The playground page in a real headless Chromium, against a real server process.

Debian's Chromium (/usr/bin/chromium), driven by Playwright for Python; Playwright's own browser
downloads are never used. Every wait is bounded (``WAIT_MS``). Without Chromium or Playwright the
tests skip locally and fail when ``CI`` is set, as the integration tests do.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unreachable
from tests.e2e.conftest import Server, scripted_graph

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
# As on this machine's known-good runs: without the background-networking flags Chromium keeps
# trying to reach Google's hosts through a closed network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAUNCH_MS = 30_000
WAIT_MS = 15_000
SLOW_REPLY = "one two three four five six seven eight nine ten eleven twelve"


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Chromium for the module, with a fresh, empty profile."""
    if not CHROMIUM.exists():
        unreachable(
            f"Chromium at {CHROMIUM} (apt-get install chromium)", FileNotFoundError(CHROMIUM)
        )
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as error:
        unreachable("Playwright for Python", error)
    expect.set_options(timeout=WAIT_MS)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            timeout=LAUNCH_MS,
        )
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        try:
            yield context
        finally:
            context.close()


@dataclass
class Watched:
    """A page and what it did: every request and socket it opened, its console, script errors."""

    page: Any
    requests: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def assert_stayed_home(self, server: Server) -> None:
        """Nothing but the server's own origin; no CSP violation, console error or warning, nor
        uncaught exception."""
        assert self.requests, "the page made no request at all"
        assert all(url.startswith(server.http + "/") for url in self.requests), self.requests
        assert all(url.startswith(server.ws + "/api/v1/chat/") for url in self.sockets)
        complaints = ("error:", "warning:", "Content Security Policy")
        assert not [m for m in self.console if any(c in m for c in complaints)], self.console
        assert not self.errors, self.errors


@pytest.fixture
def watched(browser: Any) -> Iterator[Watched]:
    page = browser.new_page()
    seen = Watched(page)
    page.on("request", lambda request: seen.requests.append(request.url))
    page.on("websocket", lambda socket: seen.sockets.append(socket.url))
    page.on("console", lambda message: seen.console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    try:
        yield seen
    finally:
        page.close()


def open_playground(
    watched: Watched,
    server: Server,
    *,
    flow: str,
    token: str,
    chat_id: str | None = None,
    wait_open: bool = True,
) -> Any:
    from playwright.sync_api import expect

    page = watched.page
    response = page.goto(f"{server.http}/playground")
    assert response is not None and response.status == 200
    page.fill("#flow-id", flow)
    page.fill("#token", token)
    page.fill("#chat-id", chat_id or "")
    page.click("#connect")
    if wait_open:
        expect(page.locator("#state")).to_have_attribute("data-state", "open")
    return page


def last_answer_streaming(page: Any) -> None:
    """Waits, polling inside the page, until the newest answer shows a partial text."""
    page.wait_for_function(
        """() => {
            const answer = Array.from(document.querySelectorAll('.answer')).pop();
            return answer !== undefined && answer.dataset.status === 'streaming'
                && answer.querySelector('.text').textContent.length > 0;
        }""",
        polling=10,
        timeout=WAIT_MS,
    )


def logged_frames(page: Any, direction: str) -> list[dict[str, Any]]:
    """The frames of the page's frame log, ``→`` sent or ``←`` received, oldest first."""
    lines = page.locator("#frame-log li").all_text_contents()
    prefix = direction + " "
    return [json.loads(line[len(prefix) :]) for line in lines if line.startswith(prefix)]


def new_chat() -> str:
    return f"pg-{uuid.uuid4().hex[:10]}"


def test_a_full_turn_streams_into_the_page_then_history_and_resume(
    watched: Watched, server: Server
) -> None:
    from playwright.sync_api import expect

    flow = server.create_flow("pg1", scripted_graph("Hello brave new world", delay=0.2))
    token = server.token("pg1")
    page = open_playground(watched, server, flow=flow, token=token, chat_id=new_chat())

    page.fill("#message", "hi there")
    page.click("#send")
    last_answer_streaming(page)  # seen mid-turn: the pieces arrive one by one
    answer = page.locator(".answer").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator(".text")).to_have_text("Hello brave new world")
    expect(answer.locator(".status")).to_have_text("complete")
    expect(page.locator(".question").last.locator(".text")).to_have_text("hi there")

    sent = logged_frames(page, "→")
    assert sent[0]["inputs"] == {"input": "hi there"}
    assert re.fullmatch(r"pg-[0-9a-f]{24}", sent[0]["client_msg_id"])
    received = logged_frames(page, "←")
    assert [f["type"] for f in received] == ["begin", "start", *["stream"] * 4, "end", "close"]
    begin, end = received[0], received[-2]

    page.click("#history")
    history = page.locator(".history[data-kind=history]").last
    expect(history.locator("li")).to_have_count(2)
    expect(history.locator("li").first).to_contain_text("hi there")
    expect(history.locator("li").last).to_contain_text("Hello brave new world")
    expect(history.locator("li").last).to_contain_text("[complete]")

    # Resume asks for what follows the last message and turn seen: nothing, the turn is over.
    page.click("#resume")
    resumed = page.locator(".history[data-kind=resume]").last
    expect(resumed).to_contain_text("resume: 0 message(s)")
    resume = logged_frames(page, "→")[-1]
    assert resume["action"] == "resume"
    assert resume["after_id"] == end["message_id"] > begin["message_id"]
    assert resume["turn_id"] == end["turn_id"]
    if end.get("seq") is not None:  # protocol 1.1
        assert resume["after_seq"] == received[-1]["seq"]
    else:
        assert "after_seq" not in resume

    # The token stays in its input: not in the page's URL, markup, storage or frame log.
    assert page.url == f"{server.http}/playground"
    assert token not in page.content()
    assert page.evaluate("() => localStorage.length + sessionStorage.length") == 0
    assert all(token not in line for line in page.locator("#frame-log li").all_text_contents())
    watched.assert_stayed_home(server)


def test_stop_ends_a_slow_turn_stopped_with_the_partial_answer(
    watched: Watched, server: Server
) -> None:
    from playwright.sync_api import expect

    flow = server.create_flow("pg2", scripted_graph(SLOW_REPLY, delay=0.2))
    page = open_playground(
        watched, server, flow=flow, token=server.token("pg2"), chat_id=new_chat()
    )

    page.fill("#message", "go")
    page.press("#message", "Enter")  # Enter sends, as the placeholder says
    last_answer_streaming(page)
    page.click("#stop")
    answer = page.locator(".answer").last
    expect(answer).to_have_attribute("data-status", "stopped")
    expect(answer.locator(".status")).to_have_text("stopped")
    partial = answer.locator(".text").text_content() or ""
    assert partial and SLOW_REPLY.startswith(partial.strip()) and len(partial) < len(SLOW_REPLY)
    assert logged_frames(page, "→")[-1] == {"action": "stop"}
    assert logged_frames(page, "←")[-1]["type"] == "close"
    watched.assert_stayed_home(server)


def test_a_refused_socket_shows_its_close_code_and_reason(watched: Watched, server: Server) -> None:
    from playwright.sync_api import expect

    flow = server.create_flow("pg3")
    page = open_playground(
        watched, server, flow=flow, token="not-a-jwt", chat_id=new_chat(), wait_open=False
    )
    close_info = page.locator("#close-info")
    expect(close_info).to_have_text("closed: 1008 Unauthorized (wasClean: true)")
    expect(close_info).to_have_attribute("data-code", "1008")
    expect(page.locator("#state")).to_have_attribute("data-state", "closed")
    expect(page.locator("#send")).to_be_disabled()
    # A debug socket (no chat id) on someone else's flow is refused by admission, not by the
    # token: the reason the page shows is the server's.
    page.fill("#token", server.token("somebody-else"))
    page.fill("#chat-id", "")
    page.click("#connect")
    expect(close_info).to_have_text("closed: 1008 Forbidden (wasClean: true)")
    watched.assert_stayed_home(server)


def test_another_feature_takes_raw_json_and_shows_its_reply(
    watched: Watched, server: Server
) -> None:
    from playwright.sync_api import expect

    flow = server.create_flow("pg4")
    page = watched.page
    page.goto(f"{server.http}/playground")
    page.fill("#flow-id", flow)
    page.fill("#token", server.token("pg4"))
    page.fill("#chat-id", new_chat())
    page.fill("#feature", "compute")
    page.press("#feature", "Enter")  # Enter in the form connects
    expect(page.locator("#state")).to_have_attribute("data-state", "open")
    assert watched.sockets[-1].startswith(f"{server.ws}/api/v1/chat/{flow}/compute?")
    page.check("#raw")
    page.fill("#message", '{"action": "compute", "data": 3}')
    page.click("#send")
    expect(page.locator(".raw").last).to_have_text('frame{"result":9.0}')
    page.fill("#message", "{not json")
    page.click("#send")
    expect(page.locator(".note").last).to_contain_text("not JSON")
    watched.assert_stayed_home(server)
