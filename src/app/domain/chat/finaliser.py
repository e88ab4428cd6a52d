"""Finishing a turn whose own process could not: no question is ever left without an answer.

A turn is finished when its answer is stored and its log ends with ``end`` and ``close``. Its
own task does that when it can. When it cannot — its process died (its lease lapsed), it was
shut down past the grace period, or the database was away until its retries gave up — whoever
next holds the chat's lease finishes it here: a process's sweeper (:mod:`.recovery`), or the
next turn of the chat before it starts. The answer stored is the text the turn log holds (what
every other socket of the chat was shown), with status ``interrupted`` (``failed`` if the turn
had already said so). Storing is idempotent per turn, so two finalisers, or a finaliser and a
turn that was only slow, store one answer between them and both report that one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from app.domain.chat.turn_frames import TurnFrames
from app.domain.chats import Category, MessageStatus, NewMessage, TurnRecord, TurnState
from app.domain.ports import ChatRepository, TurnLog
from app.domain.turn_log import LogSlice, is_close, is_end, is_stream, said

logger = logging.getLogger(__name__)

#: Sends a frame of the turn to the chat: its room here (if any), the log, the other processes.
EmitFrame = Callable[[TurnRecord, int, bytes], None]


class TurnFinaliser:
    def __init__(self, *, chats: ChatRepository, log: TurnLog, emit: EmitFrame) -> None:
        self._chats = chats
        self._log = log
        self._emit = emit

    async def finalise(
        self, record: TurnRecord, status: MessageStatus = MessageStatus.INTERRUPTED
    ) -> None:
        """Store the turn's answer if it is not, and end its log if it has not ended.

        Raises :class:`~app.domain.errors.StoreUnavailable` if a store is away: the turn stays
        unfinished, and is tried again by the next holder of the lease.
        """
        if record.finished:
            return
        logged = await self._log.read(record.chat_id, record.turn_id, -1)
        frames = logged.frames if logged is not None else []
        end = next((f for f in frames if is_end(f)), None)
        if end is not None:
            text, said_status, _ = said(end)
            status = MessageStatus(said_status) if said_status else status
        else:
            text = "".join(said(f)[0] for f in frames if is_stream(f))
        answer_id: int | None = None
        if record.question_id is not None:
            stored = await self._chats.add_message(
                NewMessage(
                    chat_id=record.chat_id,
                    flow_id=record.flow_id,
                    user_id=record.user_id,
                    is_bot=True,
                    category=Category.ANSWER,
                    message=text,
                    turn_id=record.turn_id,
                    status=status,
                    client_msg_id=record.client_msg_id,
                )
            )
            answer_id, text = stored.id, stored.message
            status = stored.status or status
        # Without a log (the store lost it) there is no position to continue from: the chat's
        # sockets learn of the turn's end from history (their rooms say resume_unavailable).
        if logged is not None and not any(is_close(f) for f in frames):
            self._end_log(record, logged, text, answer_id, status, with_end=end is None)
        self._log.end(msgspec.structs.replace(record, state=TurnState.ENDED, answer_stored=True))
        logger.info(
            "turn %s of chat %s finalised: %s (%d characters)",
            record.turn_id,
            record.chat_id,
            status,
            len(text),
        )

    def _end_log(
        self,
        record: TurnRecord,
        logged: LogSlice,
        text: str,
        answer_id: int | None,
        status: MessageStatus,
        *,
        with_end: bool,
    ) -> None:
        framer = TurnFrames(
            flow_id=record.flow_id,
            chat_id=record.chat_id,
            user_id=record.user_id,
            turn_id=record.turn_id,
            next_seq=logged.next_seq,
        )
        if with_end:
            frame = framer.frame("end", text, message_id=answer_id, status=status)
            self._emit(record, framer.next_seq - 1, frame)
        self._emit(record, framer.next_seq, framer.frame("close", ""))
