"""The Redis clients flowgate's Redis adapters share: a single server, or a Redis Cluster
(``FLOWGATE_REDIS_CLUSTER=true``, or a ``redis+cluster://`` URL), through redis-py."""

from __future__ import annotations

from typing import TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from app.infra.redis.pool import LeanBlockingConnectionPool

#: Admission waits on Redis: an unreachable server must fail fast, as ``StoreUnavailable``.
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 5.0
HEALTH_CHECK_INTERVAL = 30
#: Connections per process. Past this, a command waits for a free one (up to the command
#: timeout) instead of failing: redis-py's default pool raises at its limit, which turned a
#: burst of 100 simultaneous turns into refused turns (see app.infra.redis.pool).
MAX_CONNECTIONS = 64
CLUSTER_SCHEME = "redis+cluster://"

AnyRedis: TypeAlias = Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEME)


def make_redis(url: str, *, cluster: bool = False) -> AnyRedis:
    """A client for ``redis://host:port/db`` (or a cluster's seed node). Close it with
    ``await client.aclose()``."""
    if cluster or is_cluster_url(url):
        return RedisCluster.from_url(
            url.replace(CLUSTER_SCHEME, "redis://", 1),
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            max_connections=MAX_CONNECTIONS,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1),
        )
    pool = LeanBlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        health_check_interval=HEALTH_CHECK_INTERVAL,
        # One quick retry survives a pooled connection the server closed while idle.
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
