"""Why a connection is refused: close codes and reasons in each locale (PROTOCOL.md §3, §7)."""

from __future__ import annotations

from enum import Enum

POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013
SLOW_CONSUMER = 4008


class Rejection(Enum):
    """Each member is ``(close code, English reason, bisheng's Chinese reason or None)``."""

    UNAUTHORIZED = (POLICY_VIOLATION, "Unauthorized", None)
    ORIGIN_NOT_ALLOWED = (POLICY_VIOLATION, "origin not allowed", None)
    INVALID_CHAT_ID = (POLICY_VIOLATION, "invalid chat_id", None)
    UNKNOWN_FEATURE = (POLICY_VIOLATION, "unknown feature", None)
    FLOW_DELETED = (POLICY_VIOLATION, "flow deleted", "该技能已被删除")
    FLOW_NOT_ONLINE = (POLICY_VIOLATION, "flow not online", "当前技能未上线,无法直接对话")
    VERSION_NOT_FOUND = (POLICY_VIOLATION, "version not found", None)
    FORBIDDEN = (POLICY_VIOLATION, "Forbidden", None)
    BUILD_NOT_PASSED = (TRY_AGAIN_LATER, "build not passed", "当前编译没通过")
    TOO_MANY_CONNECTIONS = (TRY_AGAIN_LATER, "too many connections", None)
    SERVICE_UNAVAILABLE = (TRY_AGAIN_LATER, "service unavailable", None)
    TOKEN_EXPIRED = (POLICY_VIOLATION, "token expired", None)
    MESSAGE_TOO_BIG = (MESSAGE_TOO_BIG, "message too big", None)
    INTERNAL = (INTERNAL_ERROR, "internal error", None)
    SERVICE_RESTART = (SERVICE_RESTART, "service restart", None)
    SLOW_CONSUMER = (SLOW_CONSUMER, "slow consumer", None)

    @property
    def code(self) -> int:
        code: int = self.value[0]
        return code

    def reason(self, locale: str = "en") -> str:
        english: str = self.value[1]
        chinese: str | None = self.value[2]
        return chinese if locale == "zh" and chinese else english


class Rejected(Exception):
    """Admission refused the connection; the API closes it with ``rejection``'s code."""

    def __init__(self, rejection: Rejection, detail: str = "") -> None:
        super().__init__(detail or rejection.name)
        self.rejection = rejection
