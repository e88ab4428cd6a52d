"""Flow graphs: node types, validation, and the runtime that runs a turn through a graph."""

from app.domain.graph.context import Incoming, NodeContext, RuntimeServices, TurnInput
from app.domain.graph.nodes import (
    BUILTIN_NODE_TYPES,
    CHAT_INPUT,
    CHAT_OUTPUT,
    NodeRegistry,
    NodeType,
    NoParams,
    default_registry,
    split_words,
)
from app.domain.graph.runtime import CompiledGraph, GraphRuntime
from app.domain.graph.validation import validate_graph

__all__ = [
    "BUILTIN_NODE_TYPES",
    "CHAT_INPUT",
    "CHAT_OUTPUT",
    "CompiledGraph",
    "GraphRuntime",
    "Incoming",
    "NoParams",
    "NodeContext",
    "NodeRegistry",
    "NodeType",
    "RuntimeServices",
    "TurnInput",
    "default_registry",
    "split_words",
    "validate_graph",
]
