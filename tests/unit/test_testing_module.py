"""app.testing's harness: what extensions' tests rely on."""

from __future__ import annotations

from typing import ClassVar

import msgspec
import pytest

from app.extend import Feature, FeatureConnection, FeatureServices, encode
from app.testing import FakeTransport, Gateway


class EchoRequest(msgspec.Struct):
    pass


class Echo(Feature):
    name = "echo"
    actions: ClassVar = {"echo": EchoRequest}

    def __init__(self, services: FeatureServices) -> None:
        super().__init__()
        self.opened_ids: list[int] = []
        self.closed_ids: list[int] = []

    async def handle(self, connection: FeatureConnection, request: object) -> None:
        await connection.send(encode({"user": connection.user.id, "chat": connection.chat_id}))

    async def opened(self, connection: FeatureConnection) -> None:
        self.opened_ids.append(connection.id)

    async def closed(self, connection: FeatureConnection) -> None:
        self.closed_ids.append(connection.id)


async def test_a_feature_is_served_with_its_hooks() -> None:
    made: list[Echo] = []

    def make_echo(services: FeatureServices) -> Feature:
        made.append(Echo(services))
        return made[-1]

    async with Gateway(feature_factories=[make_echo]) as gateway:
        client = await gateway.open("echo", user="bob", chat_id="c9")
        assert await client.ask({"action": "echo"}) == [{"user": "bob", "chat": "c9"}]
        assert (await client.ask({"action": "nope"}))[0]["code"] == "unknown_action"
        assert made[0].opened_ids == [client.connection.id]
        await client.close()
        await client.close()  # once only
    assert made[0].closed_ids == [client.connection.id]


async def test_only_the_given_features_are_registered() -> None:
    async with Gateway(feature_factories=[]) as gateway:
        names = {feature.name for feature in gateway.container.features}
        assert names == {"chat", "compute", "translate"}
        with pytest.raises(LookupError, match="'sentiment' is not registered"):
            await gateway.open("sentiment")


async def test_waiting_for_frames_that_never_come_fails_saying_what_came() -> None:
    transport = FakeTransport()
    await transport.send(b'{"a": 1}')
    with pytest.raises(AssertionError, match=r"1 of 2 frames after 0.05 s: \[\{'a': 1\}\]"):
        await transport.wait_for(2, timeout=0.05)
    await transport.close(1011, "internal error")
    with pytest.raises(AssertionError, match="closed with"):
        await transport.wait_for(2)
