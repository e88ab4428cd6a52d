"""Validation of a flow graph: every problem, each naming the node (or edge) at fault.

A graph is ``{"nodes": [{"id", "type", "params"}], "edges": [{"source", "target"}]}``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from app.domain.graph.nodes import CHAT_INPUT, CHAT_OUTPUT, NodeRegistry, NodeType


@dataclass(frozen=True)
class ParsedNode:
    id: str
    type: NodeType[Any]
    params: msgspec.Struct


@dataclass(frozen=True)
class ParsedGraph:
    #: The nodes whose type and params are valid, in the graph's order.
    nodes: dict[str, ParsedNode]
    #: The edges between known nodes, in the graph's order, without repeats.
    edges: list[tuple[str, str]]


def validate_graph(graph: object, registry: NodeRegistry) -> list[str]:
    """Every problem of ``graph``; an empty list means it is valid."""
    return parse_graph(graph, registry)[1]


def parse_graph(graph: object, registry: NodeRegistry) -> tuple[ParsedGraph, list[str]]:
    """The graph's valid parts and its problems; the parts are complete only without problems."""
    problems: list[str] = []
    parsed = ParsedGraph(nodes={}, edges=[])
    if not isinstance(graph, Mapping):
        return parsed, ["the graph must be a JSON object with 'nodes' and 'edges'"]
    raw_nodes, raw_edges = graph.get("nodes"), graph.get("edges")
    if not isinstance(raw_nodes, list):
        problems.append("the graph's 'nodes' must be a list")
        raw_nodes = []
    if not isinstance(raw_edges, list):
        problems.append("the graph's 'edges' must be a list")
        raw_edges = []

    types = _parse_nodes(raw_nodes, registry, parsed, problems)
    _parse_edges(raw_edges, types, parsed, problems)
    problems += _cycles(types, parsed.edges)
    problems += _ends(types, parsed.edges)
    return parsed, problems


def _parse_nodes(
    raw_nodes: list[Any], registry: NodeRegistry, parsed: ParsedGraph, problems: list[str]
) -> dict[str, str | None]:
    """Fill ``parsed.nodes``; return the type name of every node that has an id."""
    types: dict[str, str | None] = {}
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, Mapping):
            problems.append(f"node #{index} is not an object")
            continue
        node_id = raw.get("id")
        if not isinstance(node_id, str) or not node_id:
            problems.append(f"node #{index} has no id (a non-empty string)")
            continue
        if node_id in types:
            problems.append(f"node {node_id!r}: duplicate id")
            continue
        type_name = raw.get("type")
        types[node_id] = type_name if isinstance(type_name, str) else None
        node_type = registry.get(type_name) if isinstance(type_name, str) else None
        if node_type is None:
            known = ", ".join(registry.names())
            problems.append(f"node {node_id!r}: unknown type {type_name!r} (known: {known})")
            continue
        raw_params = raw.get("params")
        try:
            params = msgspec.convert({} if raw_params is None else raw_params, node_type.params)
        except msgspec.ValidationError as exc:
            problems.append(f"node {node_id!r}: bad params for {type_name}: {exc}")
            continue
        parsed.nodes[node_id] = ParsedNode(node_id, node_type, params)
    return types


def _parse_edges(
    raw_edges: list[Any], types: Mapping[str, object], parsed: ParsedGraph, problems: list[str]
) -> None:
    for index, raw in enumerate(raw_edges):
        source = raw.get("source") if isinstance(raw, Mapping) else None
        target = raw.get("target") if isinstance(raw, Mapping) else None
        if not isinstance(source, str) or not isinstance(target, str):
            problems.append(f"edge #{index} must be an object with a 'source' and a 'target'")
            continue
        dangling = [
            f"{end} {node!r}"
            for end, node in (("source", source), ("target", target))
            if node not in types
        ]
        if dangling:
            problems.append(f"edge #{index}: {' and '.join(dangling)} is not a node")
        elif (source, target) not in parsed.edges:
            parsed.edges.append((source, target))


def _cycles(nodes: Iterable[str], edges: list[tuple[str, str]]) -> list[str]:
    """One problem per strongly connected component that holds a cycle (Kosaraju)."""
    order = list(nodes)
    successors: dict[str, list[str]] = {node: [] for node in order}
    predecessors: dict[str, list[str]] = {node: [] for node in order}
    for source, target in edges:
        successors[source].append(target)
        predecessors[target].append(source)

    # First pass: nodes in order of finishing a depth-first walk, without recursion.
    finished: list[str] = []
    seen: set[str] = set()
    for start in order:
        if start in seen:
            continue
        seen.add(start)
        stack = [(start, iter(successors[start]))]
        while stack:
            node, pending = stack[-1]
            following = next((n for n in pending if n not in seen), None)
            if following is None:
                stack.pop()
                finished.append(node)
            else:
                seen.add(following)
                stack.append((following, iter(successors[following])))

    # Second pass, on the reversed edges, latest finished first: each walk is one component.
    problems = []
    assigned: set[str] = set()
    for start in reversed(finished):
        if start in assigned:
            continue
        assigned.add(start)
        component, frontier = {start}, [start]
        while frontier:
            for previous in predecessors[frontier.pop()]:
                if previous not in assigned:
                    assigned.add(previous)
                    component.add(previous)
                    frontier.append(previous)
        if len(component) > 1 or start in successors[start]:
            names = ", ".join(repr(node) for node in order if node in component)
            problems.append(f"cycle through nodes {names}")
    return problems


def _ends(types: Mapping[str, str | None], edges: list[tuple[str, str]]) -> list[str]:
    """Exactly one ChatInput and one ChatOutput, the output reachable from the input."""
    problems = []
    ends: dict[str, list[str]] = {CHAT_INPUT: [], CHAT_OUTPUT: []}
    for node_id, type_name in types.items():
        if type_name in ends:
            ends[type_name].append(node_id)
    for type_name, found in ends.items():
        if not found:
            problems.append(f"the graph has no {type_name} node")
        elif len(found) > 1:
            names = ", ".join(repr(node) for node in found)
            problems.append(f"the graph must have one {type_name} node, found {names}")
    if problems:
        return problems

    (start,), (end,) = ends[CHAT_INPUT], ends[CHAT_OUTPUT]
    if end not in reachable_from(start, edges):
        problems.append(f"{CHAT_OUTPUT} node {end!r} is not reachable from {CHAT_INPUT} {start!r}")
    return problems


def reachable_from(
    start: str, edges: list[tuple[str, str]], *, backwards: bool = False
) -> set[str]:
    """The nodes reachable from ``start`` (itself included), along or against the edges."""
    following: dict[str, list[str]] = {}
    for source, target in edges:
        if backwards:
            source, target = target, source
        following.setdefault(source, []).append(target)
    reached, queue = {start}, deque([start])
    while queue:
        for node in following.get(queue.popleft(), []):
            if node not in reached:
                reached.add(node)
                queue.append(node)
    return reached
