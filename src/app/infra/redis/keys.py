"""Redis key and channel names. A chat's keys share the hash tag ``{chat:<id>}``, so that on a
Redis Cluster they live on one slot, with its sharded pub/sub channel: a turn's log append and
its publication go to the same node, in order.

The prefix must not contain braces (it would become the hash tag).
"""

from __future__ import annotations


class RedisKeys:
    __slots__ = ("leases", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        #: Sorted set: chat id -> when its lease lapses (ms since the epoch); a hint for sweeps.
        self.leases = f"{prefix}{{leases}}"

    def channel(self, chat_id: str) -> str:
        return f"{self.prefix}{{chat:{chat_id}}}"

    def chat_of(self, channel: str) -> str:
        return channel[len(self.prefix) + 6 : -1]

    def lease(self, chat_id: str) -> str:
        return f"{self.prefix}{{chat:{chat_id}}}:lease"

    def record(self, chat_id: str) -> str:
        return f"{self.prefix}{{chat:{chat_id}}}:turn"

    def log(self, chat_id: str, turn_id: str) -> str:
        return f"{self.prefix}{{chat:{chat_id}}}:log:{turn_id}"

    def owner(self, chat_id: str) -> str:
        return f"{self.prefix}{{chat:{chat_id}}}:owner"

    def connections(self, user_id: str) -> str:
        return f"{self.prefix}{{user:{user_id}}}:conns"
