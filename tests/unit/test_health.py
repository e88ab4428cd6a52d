"""Store health: a store is down after two failed pings in a row, back after one answer."""

from __future__ import annotations

from app.domain.health import StoreHealth


async def test_one_slow_or_failed_ping_is_not_an_outage() -> None:
    answers = {"database": True}

    async def ping() -> None:
        if not answers["database"]:
            raise ConnectionRefusedError("down")

    health = StoreHealth({"database": ping})
    assert await health.check_now() == {"database": True} and not health.any_down()
    answers["database"] = False
    assert await health.check_now() == {"database": False}
    assert not health.any_down()  # one failure: perhaps only busy
    await health.check_now()
    assert health.down == {"database"}  # two in a row: down, new sockets get 1013
    answers["database"] = True
    await health.check_now()
    assert not health.any_down()  # back at once
    answers["database"] = False
    await health.check_now()
    assert not health.any_down()  # the count started again
