"""The flow the benchmark creates: ChatInput -> ScriptedModel (200 words, no delay) ->
ChatOutput."""

from __future__ import annotations

from typing import Any

N_WORDS = 200
REPLY_WORDS = [f"w{i:03d}" for i in range(N_WORDS)]
REPLY = " ".join(REPLY_WORDS)


def graph(delay: float = 0) -> dict[str, Any]:
    """B5's graph (``delay`` 0); B6 uses a paced one (seconds before each piece)."""
    return {
        "nodes": [
            {"id": "in", "type": "ChatInput", "params": {}},
            {"id": "m", "type": "ScriptedModel", "params": {"reply": REPLY, "delay": delay}},
            {"id": "out", "type": "ChatOutput", "params": {}},
        ],
        "edges": [{"source": "in", "target": "m"}, {"source": "m", "target": "out"}],
    }
