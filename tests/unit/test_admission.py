"""Every row of PROTOCOL.md §3, in order, over fake ports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from polyfactory.factories.msgspec_factory import MsgspecFactory

from app.domain.admission import AdmissionRequest, AdmissionService, TokenSource
from app.domain.builds import BuildRecord, BuildStatus
from app.domain.chats import ChatSession
from app.domain.flows import FlowStatus
from app.domain.rejections import Rejected, Rejection
from app.domain.users import User
from app.infra.memory import InProcessChatOwners, InProcessConnectionCounter, MemoryStore
from app.testing import FakeBuildStore, FakeChatRepository, FakeFlowRepository, FakeTokenVerifier

GRAPH = {"nodes": [], "edges": []}


class UserFactory(MsgspecFactory[User]):
    role = None
    expires_at = None


class World:
    def __init__(self) -> None:
        self.owner = UserFactory.build()
        self.stranger = UserFactory.build()
        self.admin = UserFactory.build(role="admin")
        self.flows = FakeFlowRepository()
        self.chats = FakeChatRepository()
        self.builds = FakeBuildStore()
        self.counter = InProcessConnectionCounter()
        self.verifier = FakeTokenVerifier(
            {f"token-{u.id}": u for u in (self.owner, self.stranger, self.admin)}
        )
        self.service = AdmissionService(
            verifier=self.verifier,
            flows=self.flows,
            chats=self.chats,
            builds=self.builds,
            features={"chat", "compute"},
            allowed_origins={"https://app.example"},
            max_connections_per_user=2,
            counter=self.counter,
        )

    def token(self, user: User) -> str:
        return f"token-{user.id}"

    async def admit(self, user: User | None = None, **fields: object):  # type: ignore[no-untyped-def]
        values: dict[str, object] = {
            "flow_id": fields.pop("flow_id", "missing"),
            "feature": "chat",
            "token": self.token(user) if user else None,
            "token_source": TokenSource.QUERY,
        }
        values.update(fields)
        return await self.service.admit(AdmissionRequest(**values))  # type: ignore[arg-type]

    async def rejection(self, user: User | None = None, **fields: object) -> Rejection:
        with pytest.raises(Rejected) as caught:
            await self.admit(user, **fields)
        return caught.value.rejection


@pytest.fixture
async def world() -> World:
    return World()


async def online_flow(world: World) -> str:
    flow = await world.flows.add("f", world.owner.id, {"v": "current"}, FlowStatus.ONLINE)
    return flow.id


async def test_rule1_missing_or_bad_token_is_unauthorized(world: World) -> None:
    flow_id = await online_flow(world)
    assert await world.rejection(None, flow_id=flow_id, chat_id="c1") is Rejection.UNAUTHORIZED
    rejection = await world.rejection(None, flow_id=flow_id, chat_id="c1", token="forged")
    assert rejection is Rejection.UNAUTHORIZED
    assert (Rejection.UNAUTHORIZED.code, Rejection.UNAUTHORIZED.reason()) == (1008, "Unauthorized")


async def test_rule1_cookie_token_needs_an_allowed_origin(world: World) -> None:
    flow_id = await online_flow(world)
    cookie = {"flow_id": flow_id, "chat_id": "c1", "token_source": TokenSource.COOKIE}
    assert await world.rejection(world.owner, **cookie) is Rejection.ORIGIN_NOT_ALLOWED
    evil = await world.rejection(world.owner, origin="https://evil.example", **cookie)
    assert evil is Rejection.ORIGIN_NOT_ALLOWED
    admitted = await world.admit(world.owner, origin="https://app.example", **cookie)
    assert admitted.user == world.owner
    # A query or header token needs no Origin.
    header = await world.admit(
        world.owner, flow_id=flow_id, chat_id="c2", token_source=TokenSource.HEADER
    )
    assert header.chat_id == "c2"


async def test_rule2_unknown_feature(world: World) -> None:
    flow_id = await online_flow(world)
    rejection = await world.rejection(world.owner, flow_id=flow_id, feature="nope", chat_id="c")
    assert rejection is Rejection.UNKNOWN_FEATURE
    assert rejection.code == 1008


async def test_rule3_flow_deleted(world: World) -> None:
    rejection = await world.rejection(world.owner, flow_id="gone", chat_id="c1")
    assert rejection is Rejection.FLOW_DELETED
    assert (rejection.code, rejection.reason("zh")) == (1008, "该技能已被删除")
    assert rejection.reason("en") == "flow deleted"


async def test_rule4a_flow_not_online(world: World) -> None:
    flow = await world.flows.add("f", world.owner.id, GRAPH, FlowStatus.OFFLINE)
    rejection = await world.rejection(world.owner, flow_id=flow.id, chat_id="c1")
    assert rejection is Rejection.FLOW_NOT_ONLINE
    assert rejection.reason("zh") == "当前技能未上线,无法直接对话"


async def test_rule4b_version_must_belong_to_the_flow(world: World) -> None:
    flow_id = await online_flow(world)
    other = await world.flows.add("g", world.owner.id, GRAPH, FlowStatus.ONLINE)
    foreign = await world.flows.add_version(other.id, "v", {"v": "other"}, make_current=False)
    own = await world.flows.add_version(flow_id, "v", {"v": "own"}, make_current=False)
    for version_id in (str(foreign.id), "999", "not-a-number"):
        rejection = await world.rejection(
            world.owner, flow_id=flow_id, chat_id="c1", version_id=version_id
        )
        assert rejection is Rejection.VERSION_NOT_FOUND
    admitted = await world.admit(world.owner, flow_id=flow_id, chat_id="c1", version_id=str(own.id))
    assert admitted.graph == {"v": "own"}
    assert admitted.version_id == own.id


async def test_rule4c_chat_of_another_user_or_flow_is_forbidden(world: World) -> None:
    flow_id = await online_flow(world)
    other = await world.flows.add("g", world.stranger.id, GRAPH, FlowStatus.ONLINE)
    first = await world.admit(world.owner, flow_id=flow_id, chat_id="mine")
    assert first.graph == {"v": "current"} and not first.debug
    assert await world.chats.get_session("mine") == ChatSession("mine", flow_id, world.owner.id)
    taken = await world.rejection(world.stranger, flow_id=flow_id, chat_id="mine")
    assert taken is Rejection.FORBIDDEN
    elsewhere = await world.rejection(world.owner, flow_id=other.id, chat_id="mine")
    assert elsewhere is Rejection.FORBIDDEN
    again = await world.admit(world.owner, flow_id=flow_id, chat_id="mine")
    assert again.chat_id == "mine"


async def test_rule4c_racing_first_connections_have_one_owner(world: World) -> None:
    flow_id = await online_flow(world)
    results = await asyncio.gather(
        world.admit(world.owner, flow_id=flow_id, chat_id="race"),
        world.admit(world.stranger, flow_id=flow_id, chat_id="race"),
        return_exceptions=True,
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, Rejected)]
    assert len(admitted) == 1 and len(refused) == 1
    assert refused[0].rejection is Rejection.FORBIDDEN


async def test_invalid_chat_id_is_refused(world: World) -> None:
    flow_id = await online_flow(world)
    for chat_id in ("has space", "x" * 65, "semi;colon", ""):
        rejection = await world.rejection(world.owner, flow_id=flow_id, chat_id=chat_id)
        assert rejection is Rejection.INVALID_CHAT_ID


async def test_rule5a_debug_needs_owner_or_admin(world: World) -> None:
    flow_id = await online_flow(world)
    await world.builds.put(
        BuildRecord(flow_id, None, BuildStatus.SUCCESS, graph_data={"v": "build"}), 60
    )
    assert await world.rejection(world.stranger, flow_id=flow_id) is Rejection.FORBIDDEN
    owner = await world.admit(world.owner, flow_id=flow_id)
    admin = await world.admit(world.admin, flow_id=flow_id)
    assert owner.debug and owner.graph == {"v": "build"}
    assert admin.debug and admin.graph == {"v": "build"}


@pytest.mark.parametrize(
    "status", [BuildStatus.FAILURE, BuildStatus.STARTED, BuildStatus.IN_PROGRESS, None]
)
async def test_rule5b_build_must_have_passed(world: World, status: BuildStatus | None) -> None:
    flow = await world.flows.add("f", world.owner.id, GRAPH, FlowStatus.OFFLINE)
    if status is not None:
        await world.builds.put(BuildRecord(flow.id, None, status, graph_data=GRAPH), 60)
    rejection = await world.rejection(world.owner, flow_id=flow.id)
    assert rejection is Rejection.BUILD_NOT_PASSED
    assert (rejection.code, rejection.reason("zh")) == (1013, "当前编译没通过")


async def test_rule5b_version_build_is_its_own_record(world: World) -> None:
    flow = await world.flows.add("f", world.owner.id, GRAPH, FlowStatus.OFFLINE)
    await world.builds.put(BuildRecord(flow.id, 7, BuildStatus.SUCCESS, graph_data={"v": 7}), 60)
    rejection = await world.rejection(world.owner, flow_id=flow.id)
    assert rejection is Rejection.BUILD_NOT_PASSED
    admitted = await world.admit(world.owner, flow_id=flow.id, version_id="7")
    assert admitted.graph == {"v": 7} and admitted.version_id == 7


async def test_rule6_too_many_connections(world: World) -> None:
    flow_id = await online_flow(world)
    first = await world.admit(world.owner, flow_id=flow_id, chat_id="c0")
    await world.admit(world.owner, flow_id=flow_id, chat_id="c0")
    rejection = await world.rejection(world.owner, flow_id=flow_id, chat_id="c1")
    assert rejection is Rejection.TOO_MANY_CONNECTIONS and rejection.code == 1013
    # Refused before claiming: the chat id stays free.
    assert await world.chats.get_session("c1") is None
    # At the limit, a chat of someone else is still Forbidden (rule 4c comes before 6).
    await world.admit(world.stranger, flow_id=flow_id, chat_id="theirs")
    rejection = await world.rejection(world.owner, flow_id=flow_id, chat_id="theirs")
    assert rejection is Rejection.FORBIDDEN
    await world.service.release(first)
    assert (await world.admit(world.owner, flow_id=flow_id, chat_id="c1")).chat_id == "c1"
    assert world.counter.open_connections(world.owner.id) == 2


async def test_unreachable_store_is_service_unavailable(world: World) -> None:
    flow_id = await online_flow(world)
    world.flows.down = True
    rejection = await world.rejection(world.owner, flow_id=flow_id, chat_id="c1")
    assert rejection is Rejection.SERVICE_UNAVAILABLE and rejection.code == 1013
    world.flows.down = False
    world.builds.down = True
    assert await world.rejection(world.owner, flow_id=flow_id) is Rejection.SERVICE_UNAVAILABLE


async def test_rules_apply_in_order(world: World) -> None:
    # A bad token on an unknown feature of a missing flow: rule 1 speaks first.
    first = await world.rejection(None, flow_id="gone", feature="nope", chat_id="c")
    assert first is Rejection.UNAUTHORIZED
    second = await world.rejection(world.owner, flow_id="gone", feature="nope", chat_id="c")
    assert second is Rejection.UNKNOWN_FEATURE


class CountingChats(FakeChatRepository):
    """Counts what admission asks of the chat repository."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def get_session(self, chat_id: str) -> ChatSession | None:
        self.asked += 1
        return await super().get_session(chat_id)

    async def claim_session(self, session: ChatSession) -> ChatSession:
        self.asked += 1
        return await super().claim_session(session)


def two_processes(
    world: World, on_claim_lost: Callable[[str], None] = lambda chat_id: None
) -> tuple[AdmissionService, CountingChats, InProcessChatOwners]:
    """``world.service`` rebuilt as process one, and process two beside it: one database,
    one shared store (connection counts and owners), each its own memory of owners."""
    store = MemoryStore()
    chats = CountingChats()
    owners = InProcessChatOwners(store)

    def process(name: str) -> AdmissionService:
        return AdmissionService(
            verifier=world.verifier,
            flows=world.flows,
            chats=chats,
            builds=world.builds,
            features={"chat"},
            allowed_origins=set(),
            max_connections_per_user=2,
            counter=InProcessConnectionCounter(store),
            process_id=name,
            owners=owners,
            on_claim_lost=on_claim_lost,
        )

    world.service = process("one")
    return process("two"), chats, owners


async def test_a_chat_claimed_on_one_process_is_admitted_on_another_without_the_database(
    world: World,
) -> None:
    flow_id = await online_flow(world)
    two, chats, owners = two_processes(world)
    await world.admit(world.owner, flow_id=flow_id, chat_id="c1")
    assert chats.asked == 1  # the claim

    world.service = two  # a fresh process: it has not seen c1
    admitted = await world.admit(world.owner, flow_id=flow_id, chat_id="c1")
    assert admitted.chat_id == "c1"
    assert await world.rejection(world.stranger, flow_id=flow_id, chat_id="c1") is (
        Rejection.FORBIDDEN
    )
    assert chats.asked == 1  # both decided by the remembered owner
    assert owners.lookups == 2  # the second connect knew it from its own memory by then


async def test_a_remembered_owner_decides_at_the_connection_limit_too(world: World) -> None:
    flow_id = await online_flow(world)
    two, chats, _ = two_processes(world)
    await world.admit(world.stranger, flow_id=flow_id, chat_id="theirs")
    for chat in ("a", "b"):  # the owner at the limit
        await world.admit(world.owner, flow_id=flow_id, chat_id=chat)
    asked = chats.asked

    world.service = two
    assert await world.rejection(world.owner, flow_id=flow_id, chat_id="theirs") is (
        Rejection.FORBIDDEN
    )
    assert await world.rejection(world.owner, flow_id=flow_id, chat_id="a") is (
        Rejection.TOO_MANY_CONNECTIONS
    )
    assert chats.asked == asked


async def test_without_a_remembered_owner_the_database_decides(world: World) -> None:
    flow_id = await online_flow(world)
    two, chats, owners = two_processes(world)
    await world.admit(world.owner, flow_id=flow_id, chat_id="c1")
    owners.forget_all()  # Redis restarted, say

    world.service = two
    assert await world.rejection(world.stranger, flow_id=flow_id, chat_id="c1") is (
        Rejection.FORBIDDEN
    )
    assert chats.asked == 2  # asked again, and remembered again
    await world.admit(world.owner, flow_id=flow_id, chat_id="c1")
    assert chats.asked == 2


# -- claims the store answers before they are durable (ChatRepository.claim_durability) ----


def unflushed(chats: FakeChatRepository, chat_id: str) -> asyncio.Future[bool]:
    """Have the store answer the next claims of ``chat_id`` before they are durable."""
    future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    chats.unflushed_claims[chat_id] = future
    return future


async def test_an_unflushed_claim_admits_at_once_and_is_remembered_once_durable(
    world: World,
) -> None:
    flow_id = await online_flow(world)
    two, chats, owners = two_processes(world)
    flushed = unflushed(chats, "c1")
    await world.admit(world.owner, flow_id=flow_id, chat_id="c1")  # the chat is theirs at once
    assert chats.asked == 1
    assert await world.rejection(world.stranger, flow_id=flow_id, chat_id="c1") is (
        Rejection.FORBIDDEN
    )
    assert chats.asked == 2  # neither this process nor the shared cache trusted it yet

    flushed.set_result(True)
    await asyncio.sleep(0)  # the future's callbacks run
    del chats.unflushed_claims["c1"]
    world.service = two
    await world.admit(world.owner, flow_id=flow_id, chat_id="c1")
    assert await world.rejection(world.stranger, flow_id=flow_id, chat_id="c1") is (
        Rejection.FORBIDDEN
    )
    assert chats.asked == 2  # remembered for every process once durable
    assert await owners.lookup("c1") == ChatSession("c1", flow_id, world.owner.id)


async def test_a_claim_the_store_lost_closes_its_chat_and_is_not_remembered(
    world: World,
) -> None:
    flow_id = await online_flow(world)
    lost: list[str] = []
    _, chats, owners = two_processes(world, on_claim_lost=lost.append)
    flushed = unflushed(chats, "c1")
    first = await world.admit(world.owner, flow_id=flow_id, chat_id="c1")
    flushed.set_result(False)  # the database restarted before it flushed the claim
    await asyncio.sleep(0)
    assert lost == ["c1"]
    assert await owners.lookup("c1") is None
    await world.service.release(first)  # its socket was closed

    # Known lost when the claim is answered: refused (1013), and the connection not counted.
    for _ in range(3):
        assert await world.rejection(world.owner, flow_id=flow_id, chat_id="c1") is (
            Rejection.SERVICE_UNAVAILABLE
        )
    del chats.unflushed_claims["c1"]
    await world.admit(world.owner, flow_id=flow_id, chat_id="c1")  # claimed again
    await world.admit(world.owner, flow_id=flow_id, chat_id="c2")  # the limit (2) not spent
