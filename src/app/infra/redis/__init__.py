"""Redis adapters."""

from app.infra.redis.build_store import RedisBuildStore
from app.infra.redis.client import make_redis

__all__ = ["RedisBuildStore", "make_redis"]
