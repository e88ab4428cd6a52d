"""Extensions from installed packages, through Python entry points.

A package adds node types under the group ``flowgate.nodes`` (an entry point names a
``NodeType``, or a callable returning a list of them) and features under ``flowgate.features``::

    [project.entry-points."flowgate.nodes"]
    summarise = "acme_flowgate.nodes:SUMMARISE_NODE"
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from app.domain.graph import NodeRegistry, NodeType

NODES_GROUP = "flowgate.nodes"
FEATURES_GROUP = "flowgate.features"


class PluginError(RuntimeError):
    """An entry point could not be loaded or does not hold what its group expects."""


def load_node_types(registry: NodeRegistry) -> list[str]:
    """Register every node type the installed packages declare; return their names."""
    names = []
    for entry_point in entry_points(group=NODES_GROUP):
        loaded = _load(entry_point)
        node_types = [loaded] if isinstance(loaded, NodeType) else _call(entry_point, loaded)
        for node_type in node_types:
            if not isinstance(node_type, NodeType):
                raise PluginError(f"{_describe(entry_point)} gave {node_type!r}, not a NodeType")
            try:
                registry.register(node_type)
            except ValueError as exc:
                raise PluginError(f"{_describe(entry_point)}: {exc}") from exc
            names.append(node_type.name)
    return names


def iter_feature_entry_points() -> Iterator[Any]:
    """The object each ``flowgate.features`` entry point names, loaded."""
    for entry_point in entry_points(group=FEATURES_GROUP):
        yield _load(entry_point)


def _load(entry_point: EntryPoint) -> Any:
    try:
        return entry_point.load()
    except Exception as exc:
        raise PluginError(f"{_describe(entry_point)} failed to load: {exc!r}") from exc


def _call(entry_point: EntryPoint, factory: Any) -> list[Any]:
    if not callable(factory):
        raise PluginError(
            f"{_describe(entry_point)} is neither a NodeType nor a callable returning a list"
        )
    try:
        node_types = factory()
    except Exception as exc:
        raise PluginError(f"{_describe(entry_point)} failed: {exc!r}") from exc
    if not isinstance(node_types, list | tuple):
        raise PluginError(f"{_describe(entry_point)} returned {node_types!r}, not a list")
    return list(node_types)


def _describe(entry_point: EntryPoint) -> str:
    return f"entry point {entry_point.name!r} ({entry_point.value}) in {entry_point.group}"
