"""The Redis :class:`~app.domain.ports.BuildStore`, in bisheng's layout: a hash per build at
``{prefix}flow_data_{flow_id}[_{version_id}]`` with the fields ``status``, ``graph_data``
and ``problems`` (JSON text), expiring after the build TTL.
"""

from __future__ import annotations

from typing import Any

import msgspec
from redis.typing import EncodableT, FieldT

from app.domain.builds import BuildRecord, BuildStatus, build_key
from app.infra.redis.client import AnyRedis
from app.infra.redis.errors import redis_errors_as_unavailable as _redis_errors

_graph_decoder = msgspec.json.Decoder(dict[str, Any] | None)
_problems_decoder = msgspec.json.Decoder(list[str])


class RedisBuildStore:
    def __init__(self, redis: AnyRedis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    async def get(self, flow_id: str, version_id: int | None) -> BuildRecord | None:
        with _redis_errors():
            stored = await self._redis.hgetall(self._key(flow_id, version_id))
        if not stored:
            return None
        # Text whether or not the client was made with ``decode_responses``.
        fields = {_text(name): _text(value) for name, value in stored.items()}
        return BuildRecord(
            flow_id=flow_id,
            version_id=version_id,
            status=BuildStatus(fields["status"]),
            graph_data=_graph_decoder.decode(fields.get("graph_data", "null")),
            problems=_problems_decoder.decode(fields.get("problems", "[]")),
        )

    async def put(self, record: BuildRecord, ttl_seconds: int) -> None:
        key = self._key(record.flow_id, record.version_id)
        mapping: dict[FieldT, EncodableT] = {
            "status": record.status.value,
            "graph_data": msgspec.json.encode(record.graph_data),
            "problems": msgspec.json.encode(record.problems),
        }
        # One MULTI: the hash is replaced and given its TTL together, never left without one.
        with _redis_errors():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=mapping)
                pipe.expire(key, ttl_seconds)
                await pipe.execute()

    def _key(self, flow_id: str, version_id: int | None) -> str:
        return f"{self._prefix}{build_key(flow_id, version_id)}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
