from collections.abc import AsyncIterator
from importlib.metadata import EntryPoint
from typing import Any

import pytest

from app.domain.graph import Incoming, NodeContext, NodeType, NoParams, default_registry
from app.infra import plugins
from app.infra.plugins import PluginError, iter_feature_entry_points, load_node_types


async def _shout(params: NoParams, incoming: Incoming, context: NodeContext) -> AsyncIterator[str]:
    yield (await incoming.text()).upper()


SHOUT = NodeType("Shout", NoParams, _shout)
WHISPER = NodeType("Whisper", NoParams, _shout)
FEATURE = object()
NOT_A_NODE = 42


def node_types() -> list[NodeType[Any]]:
    return [WHISPER]


def broken_factory() -> list[NodeType[Any]]:
    raise RuntimeError("boom")


def installed(monkeypatch: pytest.MonkeyPatch, group: str, *targets: str) -> None:
    found = [EntryPoint(name=t.rsplit(":", 1)[1], value=t, group=group) for t in targets]
    monkeypatch.setattr(plugins, "entry_points", lambda group: found)


def test_node_types_from_entry_points_are_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    installed(monkeypatch, plugins.NODES_GROUP, f"{__name__}:SHOUT", f"{__name__}:node_types")
    registry = default_registry()
    assert load_node_types(registry) == ["Shout", "Whisper"]
    assert registry.get("Shout") is SHOUT
    assert registry.get("Whisper") is WHISPER


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("no_such_module:THING", "failed to load: ModuleNotFoundError"),
        (f"{__name__}:broken_factory", "failed: RuntimeError('boom')"),
        (f"{__name__}:NOT_A_NODE", "neither a NodeType nor a callable"),
        (f"{__name__}:FEATURE", "neither a NodeType nor a callable"),
    ],
)
def test_a_broken_entry_point_is_named(
    monkeypatch: pytest.MonkeyPatch, target: str, expected: str
) -> None:
    installed(monkeypatch, plugins.NODES_GROUP, target)
    with pytest.raises(PluginError) as raised:
        load_node_types(default_registry())
    assert f"entry point {target.rsplit(':', 1)[1]!r} ({target}) in flowgate.nodes" in str(
        raised.value
    )
    assert expected in str(raised.value)


def test_a_node_type_name_taken_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    installed(monkeypatch, plugins.NODES_GROUP, f"{__name__}:SHOUT")
    registry = default_registry()
    registry.register(SHOUT)
    with pytest.raises(PluginError, match="'Shout' is already registered"):
        load_node_types(registry)


def test_feature_entry_points_are_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    installed(monkeypatch, plugins.FEATURES_GROUP, f"{__name__}:FEATURE")
    assert list(iter_feature_entry_points()) == [FEATURE]
