"""``compute``: the seed's example feature, the square of a number."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import msgspec

from app.domain.connection import Connection
from app.domain.features.base import Feature, FeatureError

_encode = msgspec.json.Encoder().encode
#: What ``float()`` may take: exactly the types JSON decodes to (``bool`` is not one of them,
#: though it is an ``int``). One set look-up costs less than two ``isinstance`` calls.
_NUMERIC = frozenset((int, float, str))


class ComputeRequest(msgspec.Struct):
    data: Any = None


class ComputeResult(msgspec.Struct):
    result: float


class ComputeFeature(Feature):
    name = "compute"
    actions: ClassVar = {"compute": ComputeRequest}

    async def handle(self, connection: Connection, request: ComputeRequest) -> None:
        await connection.send(_encode(square(request.data)))


def square(data: Any) -> ComputeResult | FeatureError:
    """``{"data": 3}`` -> 9.0; the seed's float() rules, minus its answer-as-string bug."""
    if type(data) not in _NUMERIC:
        return FeatureError(error="Invalid input for computation")
    try:
        number = float(data)
        result = number**2
    except (ValueError, OverflowError):
        return FeatureError(error="Invalid input for computation")
    if not math.isfinite(result):
        return FeatureError(error="Invalid input for computation")
    return ComputeResult(result)
