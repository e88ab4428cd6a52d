"""Admission: who may open which flow, version and chat (PROTOCOL.md §2–§3, in order)."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Awaitable, Callable, Container
from enum import StrEnum
from functools import partial

import msgspec

from app.domain.builds import BuildStatus
from app.domain.chats import ChatSession
from app.domain.errors import InvalidToken, StoreUnavailable
from app.domain.flows import Flow, Graph
from app.domain.frames import INT64_MAX, MAX_TOKEN_LENGTH
from app.domain.ports import (
    BuildStore,
    ChatOwnerCache,
    ChatRepository,
    ConnectionCounter,
    FlowRepository,
    TokenVerifier,
)
from app.domain.rejections import Rejected, Rejection
from app.domain.users import User

CHAT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: Flow ids are stored in ``String(32)`` columns: a longer id (or one with a NUL, which
#: PostgreSQL cannot compare) names no flow, and is answered without asking the database.
MAX_FLOW_ID_LENGTH = 32
#: A version id is a 64-bit integer in decimal, as the database stores it (no sign, no
#: spaces, no ``_`` and no other digits than 0-9, all of which ``int()`` would take).
VERSION_ID_PATTERN = re.compile(r"[0-9]{1,19}")
#: Chat owners remembered per process; the whole map is dropped when full.
OWNER_CACHE_SIZE = 100_000


class TokenSource(StrEnum):
    QUERY = "query"
    HEADER = "header"
    COOKIE = "cookie"


class AdmissionRequest(msgspec.Struct, frozen=True):
    flow_id: str
    feature: str
    token: str | None
    token_source: TokenSource | None = None
    origin: str | None = None
    chat_id: str | None = None
    #: The raw ``version_id`` query parameter; admission parses it.
    version_id: str | None = None


class Admission(msgspec.Struct, frozen=True):
    """What an admitted connection runs: for whom, which flow, which graph, which chat."""

    user: User
    flow: Flow
    feature: str
    graph: Graph
    chat_id: str | None
    version_id: int | None
    #: The connection's entry in the per-user connection count (released when it closes).
    slot: str = ""

    @property
    def debug(self) -> bool:
        """A connection without ``chat_id`` debugs a build and persists nothing."""
        return self.chat_id is None


class AdmissionService:
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        flows: FlowRepository,
        chats: ChatRepository,
        builds: BuildStore,
        features: Container[str],
        allowed_origins: Container[str],
        max_connections_per_user: int,
        counter: ConnectionCounter,
        stores_down: Callable[[], bool] = lambda: False,
        process_id: str = "p",
        owners: ChatOwnerCache | None = None,
        on_claim_lost: Callable[[str], None] = lambda chat_id: None,
    ) -> None:
        """``on_claim_lost(chat_id)``: the store lost a claim that connections of the chat were
        admitted on (it restarted before the claim was durable): close them."""
        self._verifier = verifier
        self._flows = flows
        self._chats = chats
        self._builds = builds
        self._features = features
        self._allowed_origins = allowed_origins
        self._max_connections = max_connections_per_user
        self._counter = counter
        self._stores_down = stores_down
        self._slots = (f"{process_id}:{n}" for n in itertools.count(1))
        #: Owners this process has seen; ``_shared_owners``: those every process has (None:
        #: a chat this process has not seen asks the chat repository).
        self._owners: dict[str, ChatSession] = {}
        self._shared_owners = owners
        self._on_claim_lost = on_claim_lost

    async def admit(self, request: AdmissionRequest) -> Admission:
        """The admission, or :class:`Rejected` with the first rule that failed."""
        try:
            return await self._admit(request)
        except StoreUnavailable as exc:
            raise Rejected(Rejection.SERVICE_UNAVAILABLE, str(exc)) from exc

    async def release(self, admission: Admission) -> None:
        """The connection closed: it no longer counts against its user's limit."""
        if admission.slot:
            await self._counter.release(admission.user.id, admission.slot)

    async def _admit(self, request: AdmissionRequest) -> Admission:
        user = await self._authenticate(request)
        # A store known to be away: no turn could run (PROTOCOL.md §3, "service unavailable").
        if self._stores_down():
            raise Rejected(Rejection.SERVICE_UNAVAILABLE, "a backing store is down")
        if request.feature not in self._features:
            raise Rejected(Rejection.UNKNOWN_FEATURE)
        if request.chat_id is not None and not CHAT_ID_PATTERN.fullmatch(request.chat_id):
            raise Rejected(Rejection.INVALID_CHAT_ID)
        version_id = _parse_version_id(request.version_id)
        flow_id = request.flow_id
        if not flow_id or len(flow_id) > MAX_FLOW_ID_LENGTH or "\x00" in flow_id:
            raise Rejected(Rejection.FLOW_DELETED, "no flow can have this id")
        flow = await self._flows.get(flow_id)
        if flow is None:
            raise Rejected(Rejection.FLOW_DELETED)
        # Rule 6 is counted across every process (a dead process's entries expire), first, so
        # that a user at the limit claims no chat; its answer waits for the rules before it.
        slot = next(self._slots)
        # A chat this process has not seen: its owner is asked of the shared cache before the
        # count is awaited, so that both may go in one round trip (after a deploy, the common
        # case: a reconnect then costs the count's round trip alone).
        remembered = None
        shared, chat_id = self._shared_owners, request.chat_id
        if shared is not None and chat_id is not None and chat_id not in self._owners:
            remembered = shared.lookup(chat_id)
        counted = await self._counter.acquire(user.id, slot, self._max_connections)
        try:
            if request.chat_id is not None:
                graph = await self._admit_chat(
                    user, flow, request.chat_id, version_id, counted, remembered
                )
            else:
                graph = await self._admit_debug(user, flow, version_id)
                if not counted:
                    raise Rejected(Rejection.TOO_MANY_CONNECTIONS)
        except BaseException:
            if counted:
                await self._counter.release(user.id, slot)
            raise
        return Admission(
            user=user,
            flow=flow,
            feature=request.feature,
            graph=graph,
            chat_id=request.chat_id,
            version_id=version_id,
            slot=slot,
        )

    async def _authenticate(self, request: AdmissionRequest) -> User:
        if not request.token:
            raise Rejected(Rejection.UNAUTHORIZED, "no token")
        if len(request.token) > MAX_TOKEN_LENGTH:
            raise Rejected(Rejection.UNAUTHORIZED, "token too long")
        try:
            user = await self._verifier.verify(request.token)
        except InvalidToken as exc:
            raise Rejected(Rejection.UNAUTHORIZED, str(exc)) from exc
        # Cookies ride along on cross-site requests; only trusted pages may use them.
        if request.token_source is TokenSource.COOKIE and (
            request.origin is None or request.origin not in self._allowed_origins
        ):
            raise Rejected(Rejection.ORIGIN_NOT_ALLOWED)
        return user

    async def _admit_chat(
        self,
        user: User,
        flow: Flow,
        chat_id: str,
        version_id: int | None,
        counted: bool,
        remembered: Awaitable[ChatSession | None] | None,
    ) -> Graph:
        if not flow.is_online:
            raise Rejected(Rejection.FLOW_NOT_ONLINE)
        graph = flow.graph
        if version_id is not None:
            version = await self._flows.get_version(version_id)
            if version is None or version.flow_id != flow.id:
                raise Rejected(Rejection.VERSION_NOT_FOUND)
            graph = version.graph
        await self._check_chat_owner(user, flow, chat_id, counted, remembered)
        return graph

    async def _check_chat_owner(
        self,
        user: User,
        flow: Flow,
        chat_id: str,
        counted: bool,
        remembered: Awaitable[ChatSession | None] | None,
    ) -> None:
        """Rule 4c, then rule 6; a new chat id becomes this user's at once (one statement).

        Ownership never changes once claimed, so it is remembered, here and in the shared
        cache, once the store has made the claim durable: a reconnect to a chat that any
        process has seen costs no query. At the connection limit a read decides between
        Forbidden and too many connections.
        """
        owner = self._owners.get(chat_id)
        if owner is None and remembered is not None:
            owner = await remembered
            if owner is not None:
                self._remember_here(owner)
        if owner is None and not counted:
            session = await self._chats.get_session(chat_id)
            if session is not None and not _owns(session, user, flow):
                raise Rejected(Rejection.FORBIDDEN)
            raise Rejected(Rejection.TOO_MANY_CONNECTIONS)
        if owner is None:
            # Two first connections may race for a new id: the store lets exactly one win.
            mine = ChatSession(chat_id=chat_id, flow_id=flow.id, user_id=user.id)
            owner = await self._chats.claim_session(mine)
            durable = self._chats.claim_durability(chat_id)
            if durable is None:
                self._learned(owner)
            elif durable.done():
                self._claim_settled(owner, durable)
                if not _durable(durable):
                    raise Rejected(Rejection.SERVICE_UNAVAILABLE, "the chat's claim was lost")
            else:  # decided at once; remembered (or its sockets closed) when the store says
                durable.add_done_callback(partial(self._claim_settled, owner))
        if not _owns(owner, user, flow):
            raise Rejected(Rejection.FORBIDDEN)
        if not counted:
            raise Rejected(Rejection.TOO_MANY_CONNECTIONS)

    def _learned(self, owner: ChatSession) -> None:
        """An owner the store will not forget: remembered here and for every process."""
        if self._shared_owners is not None:
            self._shared_owners.remember(owner)
        self._remember_here(owner)

    def _claim_settled(self, owner: ChatSession, durable: asyncio.Future[bool]) -> None:
        if _durable(durable):
            self._learned(owner)
        else:
            self._on_claim_lost(owner.chat_id)

    def _remember_here(self, owner: ChatSession) -> None:
        if len(self._owners) >= OWNER_CACHE_SIZE:
            self._owners.clear()
        self._owners[owner.chat_id] = owner

    async def _admit_debug(self, user: User, flow: Flow, version_id: int | None) -> Graph:
        if flow.owner_id != user.id and not user.is_admin:
            raise Rejected(Rejection.FORBIDDEN)
        record = await self._builds.get(flow.id, version_id)
        if record is None or record.status != BuildStatus.SUCCESS or record.graph_data is None:
            raise Rejected(Rejection.BUILD_NOT_PASSED)
        return record.graph_data


def _durable(future: asyncio.Future[bool]) -> bool:
    return not future.cancelled() and future.exception() is None and future.result()


def _owns(session: ChatSession, user: User, flow: Flow) -> bool:
    return session.user_id == user.id and session.flow_id == flow.id


def _parse_version_id(raw: str | None) -> int | None:
    """The version id, or :class:`Rejected` (version not found) for anything that is not one.

    Bounded before the database sees it: an integer past 64 bits would raise
    ``OverflowError`` in the driver (1011) instead of being simply not found.
    """
    if raw is None or raw == "":
        return None
    if VERSION_ID_PATTERN.fullmatch(raw) is None or int(raw) > INT64_MAX:
        raise Rejected(Rejection.VERSION_NOT_FOUND, f"version_id {raw[:32]!r} is not a 64-bit id")
    return int(raw)
