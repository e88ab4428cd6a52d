"""docs/protocol.md and docs/asyncapi.json stay true to the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from app.api.asyncapi import _ENCODED, asyncapi_document
from app.domain import frames
from app.domain.chat import ChatFeature
from app.domain.rejections import Rejection

DOCS = Path(__file__).resolve().parents[2] / "docs"
PROTOCOL = (DOCS / "protocol.md").read_text()
EXAMPLES = re.findall(r"```json\n(.*?)```", PROTOCOL, flags=re.S)
SERVER_TYPES: dict[str, type[msgspec.Struct]] = {
    "history": frames.HistoryFrame,
    "error": frames.ErrorFrame,
    "pong": frames.PongFrame,
}


def test_the_checked_in_asyncapi_document_is_the_generated_one() -> None:
    checked_in = (DOCS / "asyncapi.json").read_bytes()
    assert checked_in == _ENCODED, "regenerate: python -m app.api.asyncapi > docs/asyncapi.json"


def test_the_asyncapi_document_names_every_close_code_and_frame() -> None:
    document = asyncapi_document()
    codes = {entry["code"] for entry in document["components"]["x-close-codes"]}
    assert codes == {r.code for r in Rejection}
    chat_frame = document["components"]["schemas"]["ChatFrame"]
    assert {"seq", "first_seq", "turn_id", "status"} <= set(chat_frame["properties"])
    # Every field is always sent but first_seq, which only a joined stream frame carries.
    assert set(chat_frame["required"]) == set(chat_frame["properties"]) - {"first_seq"}


def test_the_protocol_document_has_examples() -> None:
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.split(",")[0][:40])
def test_every_example_frame_matches_its_type(example: str) -> None:
    raw = example.encode()
    value: dict[str, Any] = msgspec.json.decode(raw)
    if "type" in value:
        kind = value["type"]
        if kind in SERVER_TYPES:
            msgspec.json.decode(raw, type=SERVER_TYPES[kind])
        else:
            # A chat frame carries every field, no more, no less; first_seq only when joined.
            decoded = msgspec.json.decode(raw, type=frames.ChatFrame)
            fields = set(decoded.__struct_fields__)
            if decoded.first_seq is None:
                fields.discard("first_seq")
            else:
                assert decoded.type == "stream"
                assert decoded.seq is not None and decoded.first_seq < decoded.seq
            assert set(value) == fields
            assert decoded.type in {"begin", "start", "stream", "end", "close"}
        return
    feature = ChatFeature.__new__(ChatFeature)
    feature._decoders = {
        action: msgspec.json.Decoder(request) for action, request in ChatFeature.actions.items()
    }
    request = feature.decode(value.get("action"), raw)
    assert request is not None


def test_every_error_code_is_documented() -> None:
    codes = [v for k, v in vars(frames.ErrorCode).items() if not k.startswith("_")]
    for code in codes:
        assert f"`{code}`" in PROTOCOL, code


def test_every_close_code_is_documented() -> None:
    for rejection in Rejection:
        assert f"| {rejection.code} |" in PROTOCOL, rejection
