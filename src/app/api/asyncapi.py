"""The AsyncAPI 3.0 document of the chat protocol, generated from the msgspec frame types.

Served at ``GET /asyncapi.json`` and checked in as ``docs/asyncapi.json`` (a test fails when
the two differ: regenerate with ``python -m app.api.asyncapi > docs/asyncapi.json``). The
prose contract is ``docs/protocol.md``.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec
from litestar import get

from app.domain import frames
from app.domain.features.base import FeatureError
from app.domain.features.compute import ComputeRequest, ComputeResult
from app.domain.features.translate import TranslateRequest, TranslateResult
from app.domain.rejections import Rejection

VERSION = "1.2"

#: Client frames: (message name, action (None: no action field), payload type, summary).
CLIENT_FRAMES: list[tuple[str, str | None, type[msgspec.Struct], str]] = [
    ("chat", "chat", frames.ChatRequest, "A user message; starts a turn (`action` may be absent)."),
    ("stop", "stop", frames.StopRequest, "Stop the chat's running turn, on any process."),
    ("history", "history", frames.HistoryRequest, "Older messages, newest first."),
    ("resume", "resume", frames.ResumeRequest, "What the client has not seen (protocol.md 4.1)."),
    ("ping", "ping", frames.PingRequest, "Answered by pong."),
    ("auth", "auth", frames.AuthRequest, "Replace the connection's token (same user)."),
    ("compute", "compute", ComputeRequest, "The compute feature: the square of `data`."),
    ("translate", None, TranslateRequest, "The translate feature."),
]
#: Server frames: (message name, payload type, summary).
SERVER_FRAMES: list[tuple[str, type[msgspec.Struct], str]] = [
    ("chatFrame", frames.ChatFrame, "begin, start, stream, end, close: a turn's frames."),
    ("history", frames.HistoryFrame, "Answer to history and resume."),
    ("pong", frames.PongFrame, "Answer to ping."),
    ("error", frames.ErrorFrame, "A frame could not be served; the connection stays open."),
    ("computeResult", ComputeResult, "The compute feature's answer."),
    ("translateResult", TranslateResult, "The translate feature's answer."),
    ("featureError", FeatureError, "A feature request that cannot be served."),
]
QUERY_PARAMETERS = {
    "t": "A JWT (else the Authorization: Bearer header, else the access_token_cookie cookie).",
    "chat_id": "The conversation: 1-64 characters of [A-Za-z0-9_-]; absent: debug the build.",
    "version_id": "A version of the flow: decimal digits, up to 2^63-1 (else: version not found).",
}


def asyncapi_document() -> dict[str, Any]:
    types: list[type[msgspec.Struct]] = [t for _, _, t, _ in CLIENT_FRAMES]
    types += [t for _, t, _ in SERVER_FRAMES]
    schemas, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )
    messages: dict[str, Any] = {}
    for (name, action, _, summary), schema in zip(CLIENT_FRAMES, schemas, strict=False):
        payload: dict[str, Any] = {"allOf": [schema]}
        if action is not None:
            payload = {
                "allOf": [
                    schema,
                    {"type": "object", "properties": {"action": {"const": action}}},
                ]
            }
        messages[f"client.{name}"] = {"name": name, "summary": summary, "payload": payload}
    server_schemas = schemas[len(CLIENT_FRAMES) :]
    for (name, _, summary), schema in zip(SERVER_FRAMES, server_schemas, strict=True):
        messages[f"server.{name}"] = {"name": name, "summary": summary, "payload": schema}
    client_refs = [{"$ref": f"#/components/messages/client.{n}"} for n, *_ in CLIENT_FRAMES]
    server_refs = [{"$ref": f"#/components/messages/server.{n}"} for n, *_ in SERVER_FRAMES]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "flowgate chat",
            "version": VERSION,
            "description": "The chat protocol of flowgate; the prose contract is docs/protocol.md.",
        },
        "channels": {
            "chat": {
                "address": "/api/v1/chat/{flow_id}",
                "parameters": {"flow_id": {"description": "The flow to chat with."}},
                "messages": {
                    m["$ref"].rsplit("/", 1)[1]: m for m in client_refs[:6] + server_refs[:4]
                },
                "bindings": {"ws": {"query": _query_schema()}},
            },
            "feature": {
                "address": "/api/v1/chat/{flow_id}/{feature}",
                "parameters": {
                    "flow_id": {"description": "The flow."},
                    "feature": {"description": "compute, translate, or an extension's."},
                },
                "messages": {
                    m["$ref"].rsplit("/", 1)[1]: m for m in client_refs[4:] + server_refs[2:]
                },
                "bindings": {"ws": {"query": _query_schema()}},
            },
        },
        "operations": {
            "sendToChat": {
                "action": "receive",
                "channel": {"$ref": "#/channels/chat"},
                "messages": [
                    {"$ref": f"#/channels/chat/messages/{r['$ref'].rsplit('/', 1)[1]}"}
                    for r in client_refs[:6]
                ],
            },
            "receiveFromChat": {
                "action": "send",
                "channel": {"$ref": "#/channels/chat"},
                "messages": [
                    {"$ref": f"#/channels/chat/messages/{r['$ref'].rsplit('/', 1)[1]}"}
                    for r in server_refs[:4]
                ],
            },
        },
        "components": {
            "schemas": components,
            "messages": messages,
            "x-close-codes": _close_codes(),
        },
    }


def _query_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            name: {"type": "string", "description": text} for name, text in QUERY_PARAMETERS.items()
        },
    }


def _close_codes() -> list[dict[str, Any]]:
    return [
        {"code": r.code, "reason": r.reason("en"), "reason_zh": r.reason("zh"), "name": r.name}
        for r in Rejection
    ]


_ENCODED = msgspec.json.format(msgspec.json.encode(asyncapi_document()), indent=2) + b"\n"


@get("/asyncapi.json", sync_to_thread=False, media_type="application/json")
def asyncapi_json() -> bytes:
    return _ENCODED


if __name__ == "__main__":
    sys.stdout.buffer.write(_ENCODED)
