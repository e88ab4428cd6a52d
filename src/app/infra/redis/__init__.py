"""Redis adapters: build records, turn leases, turn logs, the chat fan-out, connection counts."""

from app.infra.redis.build_store import RedisBuildStore
from app.infra.redis.channels import RedisChannels
from app.infra.redis.client import make_redis
from app.infra.redis.counter import RedisConnectionCounter
from app.infra.redis.keys import RedisKeys
from app.infra.redis.lease import RedisLease
from app.infra.redis.turn_log import RedisTurnLog

__all__ = [
    "RedisBuildStore",
    "RedisChannels",
    "RedisConnectionCounter",
    "RedisKeys",
    "RedisLease",
    "RedisTurnLog",
    "make_redis",
]
