"""SIGTERM's drain (app.api.graceful_shutdown): the drain runs, then the signal goes on to the
server's handler; what lived before the drain is out of the cyclic collector's sight; the
adapters then close, each within a bound (app.bootstrap)."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Iterator

import pytest

from app import bootstrap
from app.api.graceful_shutdown import GracefulShutdown
from app.testing import Gateway


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the run collects as before


async def test_the_drain_runs_with_what_lived_before_frozen_then_hands_on(unfrozen: None) -> None:
    sockets = [{"socket": n} for n in range(1000)]  # objects that live until the drain
    seen: dict[str, object] = {}

    async def drain() -> None:
        seen["frozen"] = gc.get_freeze_count()
        seen["socket_tracked"] = any(obj is sockets[0] for obj in gc.get_objects())

    def server_handler(signum: int, frame: object) -> None:
        seen["handed_on"] = signum

    shutdown = GracefulShutdown(drain)
    shutdown._previous = server_handler
    await shutdown._drain_then_hand_on(signal.SIGTERM, None)

    assert seen["handed_on"] == signal.SIGTERM
    assert isinstance(seen["frozen"], int) and seen["frozen"] >= len(sockets)
    # gc.get_objects() lists what the collector may visit: a frozen object is not among them.
    assert seen["socket_tracked"] is False


async def test_a_failing_drain_still_hands_the_signal_on(unfrozen: None) -> None:
    handed: list[int] = []

    async def drain() -> None:
        raise RuntimeError("a store is gone")

    shutdown = GracefulShutdown(drain)
    shutdown._previous = lambda signum, frame: handed.append(signum)
    await shutdown._drain_then_hand_on(signal.SIGTERM, None)
    assert handed == [signal.SIGTERM]


async def test_closing_leaves_a_stuck_adapter_behind_by_name_and_closes_the_rest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The process's last step after the drain: one adapter that never finishes closing (or
    fails) does not keep the process from exiting, nor the others from closing."""
    monkeypatch.setattr(bootstrap, "CLOSE_TIMEOUT", 0.05)
    gateway = Gateway()
    closed: list[str] = []

    class Stuck:
        async def aclose(self) -> None:
            await asyncio.Event().wait()

    class Failing:
        async def aclose(self) -> None:
            raise RuntimeError("boom")

    async def last() -> None:
        closed.append("last")

    # Closers run in reverse: the stuck and the failing ones first.
    gateway.container.closers[:] = [last, Failing().aclose, Stuck().aclose]
    async with asyncio.timeout(5):
        await gateway.container.aclose()
    assert closed == ["last"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("Stuck.aclose took over" in m for m in messages), messages
    assert any("closing" in m and "Failing.aclose failed" in m for m in messages), messages
