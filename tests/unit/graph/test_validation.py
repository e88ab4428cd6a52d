from itertools import pairwise
from typing import Any

import pytest

from app.domain.graph import default_registry, validate_graph

REGISTRY = default_registry()


def node(node_id: str, node_type: str, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "type": node_type, "params": params}


def edge(source: str, target: str) -> dict[str, str]:
    return {"source": source, "target": target}


def graph(*nodes: object, edges: list[dict[str, Any]]) -> dict[str, Any]:
    return {"nodes": list(nodes), "edges": edges}


def chain(*nodes: dict[str, Any]) -> dict[str, Any]:
    """The nodes linked one after the other."""
    ids = [n["id"] for n in nodes]
    return graph(*nodes, edges=[edge(s, t) for s, t in pairwise(ids)])


def test_a_valid_graph_has_no_problems() -> None:
    valid = chain(
        node("in", "ChatInput"),
        node("prompt", "PromptTemplate", template="Answer: {input}", system="Be brief."),
        node("model", "ChatModel", model="gpt-4o-mini", temperature=0.2),
        node("translate", "Translate", target_language="zh"),
        node("out", "ChatOutput"),
    )
    assert validate_graph(valid, REGISTRY) == []


@pytest.mark.parametrize("not_a_graph", [None, [], "graph", 3])
def test_a_graph_must_be_an_object(not_a_graph: object) -> None:
    assert validate_graph(not_a_graph, REGISTRY) == [
        "the graph must be a JSON object with 'nodes' and 'edges'"
    ]


def test_nodes_and_edges_must_be_lists() -> None:
    problems = validate_graph({"nodes": {}, "edges": None}, REGISTRY)
    assert "the graph's 'nodes' must be a list" in problems
    assert "the graph's 'edges' must be a list" in problems


def test_a_node_needs_an_id() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            {"type": "ScriptedModel"},
            {"id": "", "type": "ChatOutput"},
            edges=[],
        ),
        REGISTRY,
    )
    assert "node #1 has no id (a non-empty string)" in problems
    assert "node #2 has no id (a non-empty string)" in problems


def test_a_node_must_be_an_object() -> None:
    problems = validate_graph(graph(node("in", "ChatInput"), "oops", edges=[]), REGISTRY)
    assert "node #1 is not an object" in problems


def test_node_ids_are_unique() -> None:
    problems = validate_graph(
        chain(node("in", "ChatInput"), node("in", "ScriptedModel"), node("out", "ChatOutput")),
        REGISTRY,
    )
    assert [p for p in problems if "'in'" in p and "duplicate id" in p]


def test_unknown_node_type() -> None:
    problems = validate_graph(
        chain(node("in", "ChatInput"), node("llm", "GPT"), node("out", "ChatOutput")), REGISTRY
    )
    assert len(problems) == 1
    assert "node 'llm'" in problems[0]
    assert "unknown type 'GPT'" in problems[0]
    assert "ChatModel" in problems[0]  # lists the known types


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"temprature": 0.3}, "unknown field `temprature`"),
        ({"temperature": 3}, "<= 2.0"),
        ({"temperature": -1}, ">= 0.0"),
        ({"api_key": "sk-secret"}, "unknown field `api_key`"),
        ({"model": 4}, "`$.model`"),
    ],
)
def test_bad_params_name_the_node(params: dict[str, Any], expected: str) -> None:
    problems = validate_graph(
        chain(
            node("in", "ChatInput"), node("model", "ChatModel", **params), node("out", "ChatOutput")
        ),
        REGISTRY,
    )
    assert len(problems) == 1
    assert problems[0].startswith("node 'model': bad params for ChatModel")
    assert expected in problems[0]


@pytest.mark.parametrize(
    ("node_type", "params"),
    [
        ("PromptTemplate", {"template": "unbalanced {input"}),
        ("PromptTemplate", {}),
        ("ScriptedModel", {"delay": -0.5}),
        ("Translate", {"target_language": ""}),
        ("ChatInput", {"text": "x"}),
    ],
)
def test_bad_params_of_each_builtin(node_type: str, params: dict[str, Any]) -> None:
    nodes = [node("in", "ChatInput"), node("x", node_type, **params), node("out", "ChatOutput")]
    if node_type == "ChatInput":
        nodes = nodes[1:]
    problems = validate_graph(chain(*nodes), REGISTRY)
    assert len(problems) == 1
    assert problems[0].startswith(f"node 'x': bad params for {node_type}")


def test_params_must_be_an_object() -> None:
    problems = validate_graph(
        chain(
            node("in", "ChatInput"),
            {"id": "s", "type": "ScriptedModel", "params": [1]},
            node("out", "ChatOutput"),
        ),
        REGISTRY,
    )
    assert problems == ["node 's': bad params for ScriptedModel: Expected `object`, got `array`"]


def test_dangling_edge_names_the_missing_node() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("out", "ChatOutput"),
            edges=[edge("in", "out"), edge("in", "ghost"), edge("phantom", "out")],
        ),
        REGISTRY,
    )
    assert "edge #1: target 'ghost' is not a node" in problems
    assert "edge #2: source 'phantom' is not a node" in problems


def test_an_edge_needs_source_and_target() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("out", "ChatOutput"),
            edges=[edge("in", "out"), {"source": "in"}],
        ),
        REGISTRY,
    )
    assert problems == ["edge #1 must be an object with a 'source' and a 'target'"]


def test_cycle_names_its_nodes() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("a", "ScriptedModel"),
            node("b", "ScriptedModel"),
            node("c", "ScriptedModel"),
            node("out", "ChatOutput"),
            edges=[
                edge("in", "a"),
                edge("a", "b"),
                edge("b", "c"),
                edge("c", "a"),
                edge("c", "out"),
            ],
        ),
        REGISTRY,
    )
    assert problems == ["cycle through nodes 'a', 'b', 'c'"]


def test_every_cycle_is_reported_including_self_loops() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("a", "ScriptedModel"),
            node("b", "ScriptedModel"),
            node("self", "ScriptedModel"),
            node("out", "ChatOutput"),
            edges=[
                edge("in", "a"),
                edge("a", "b"),
                edge("b", "a"),
                edge("b", "self"),
                edge("self", "self"),
                edge("self", "out"),
            ],
        ),
        REGISTRY,
    )
    assert sorted(problems) == ["cycle through nodes 'a', 'b'", "cycle through nodes 'self'"]


def test_exactly_one_chat_input() -> None:
    missing = validate_graph(chain(node("s", "ScriptedModel"), node("out", "ChatOutput")), REGISTRY)
    assert missing == ["the graph has no ChatInput node"]

    two = validate_graph(
        graph(
            node("in1", "ChatInput"),
            node("in2", "ChatInput"),
            node("out", "ChatOutput"),
            edges=[edge("in1", "out"), edge("in2", "out")],
        ),
        REGISTRY,
    )
    assert two == ["the graph must have one ChatInput node, found 'in1', 'in2'"]


def test_exactly_one_chat_output() -> None:
    missing = validate_graph(chain(node("in", "ChatInput"), node("s", "ScriptedModel")), REGISTRY)
    assert missing == ["the graph has no ChatOutput node"]

    two = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("o1", "ChatOutput"),
            node("o2", "ChatOutput"),
            edges=[edge("in", "o1"), edge("in", "o2")],
        ),
        REGISTRY,
    )
    assert two == ["the graph must have one ChatOutput node, found 'o1', 'o2'"]


def test_output_must_be_reachable_from_input() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("reply", "ScriptedModel", reply="hi"),
            node("out", "ChatOutput"),
            edges=[edge("reply", "out"), edge("out", "in")],
        ),
        REGISTRY,
    )
    assert problems == ["ChatOutput node 'out' is not reachable from ChatInput 'in'"]


def test_every_problem_is_reported_at_once() -> None:
    problems = validate_graph(
        graph(
            node("in", "ChatInput"),
            node("model", "ChatModel", temperature=9),
            node("x", "Nope"),
            edges=[edge("in", "model"), edge("model", "missing")],
        ),
        REGISTRY,
    )
    assert len(problems) == 4
    assert any("'model'" in p for p in problems)
    assert any("'x'" in p for p in problems)
    assert any("'missing'" in p for p in problems)
    assert "the graph has no ChatOutput node" in problems
