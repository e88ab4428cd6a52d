"""The Redis :class:`~app.domain.ports.ChatOwnerCache`: ``{prefix}{chat:<id>}:owner`` holds
the owner of a claimed chat (``[user_id, flow_id]``, JSON), written once the chat repository
has claimed or read it, and read in the same pipeline as the connection count
(:class:`~app.infra.redis.pipeline_batch.PipelineBatch`). Each read keeps the entry for
:data:`OWNER_TTL` more (``GETEX``), so the chats in use stay remembered and the others go.

Ownership never changes once claimed, and nothing but the repository's answer is written, so
an entry is never wrong; a lost one (Redis restarted, evicted, expired) only sends the next
connect to the database again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import msgspec

from app.domain.chats import ChatSession
from app.infra.redis.keys import RedisKeys
from app.infra.redis.pipeline_batch import PipelineBatch

logger = logging.getLogger(__name__)

#: Seconds an owner stays remembered after its chat was last connected to: long enough for
#: every chat in use to be known to a fresh process after a deploy, short enough that chats
#: nobody opens leave Redis (an entry is ~100 bytes).
OWNER_TTL = 3600
#: A write nobody waits for rides with the next batch, or goes after this many seconds.
REMEMBER_LINGER = 0.02

_Owner = tuple[str, str]
_decoder = msgspec.json.Decoder(_Owner)


class RedisChatOwners:
    def __init__(self, batch: PipelineBatch, keys: RedisKeys) -> None:
        self._batch = batch
        self._keys = keys

    def lookup(self, chat_id: str) -> Awaitable[ChatSession | None]:
        reply = self._batch.send("GETEX", self._keys.owner(chat_id), "EX", OWNER_TTL)
        answer: asyncio.Future[ChatSession | None] = asyncio.get_running_loop().create_future()
        reply.add_done_callback(lambda done: _answer(answer, chat_id, done))
        return answer

    def remember(self, session: ChatSession) -> None:
        value = msgspec.json.encode((session.user_id, session.flow_id))
        key = self._keys.owner(session.chat_id)
        reply = self._batch.send("SET", key, value, "EX", OWNER_TTL, linger=REMEMBER_LINGER)
        reply.add_done_callback(_written)


def _answer(answer: asyncio.Future[ChatSession | None], chat_id: str, reply: Any) -> None:
    """The owner from a GETEX reply: anything but a well-formed entry (a failure, a value
    written by something else) is a miss, and the repository decides."""
    owner = None
    if not reply.cancelled() and reply.exception() is None and reply.result() is not None:
        try:
            user_id, flow_id = _decoder.decode(reply.result())
        except msgspec.DecodeError:
            logger.warning(
                "chat %s: its remembered owner is not readable; asking the database", chat_id
            )
        else:
            owner = ChatSession(chat_id=chat_id, flow_id=flow_id, user_id=user_id)
    if not answer.done():
        answer.set_result(owner)


def _written(reply: Any) -> None:
    if not reply.cancelled() and (error := reply.exception()) is not None:
        logger.debug("a chat's owner was not remembered: %s", error)
