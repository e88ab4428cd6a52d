"""The composition root: builds every adapter from settings and hands them to the domain.

Nothing else constructs adapters. :func:`build_container` makes the real ones (SQL, Redis or
their in-process twins, JWT, model providers) and :func:`compose` wires any set of them into
the services: the server, the CLI and the tests (with fakes) all go through ``compose``.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
from advanced_alchemy.config import SQLAlchemyAsyncConfig

from app.domain.admission import AdmissionService
from app.domain.catalog import FlowCatalog
from app.domain.chat import ChatFeature, ChatRooms
from app.domain.chat.turn import TurnServices
from app.domain.features import FeatureFactory, FeatureRegistry, FeatureServices
from app.domain.features.compute import ComputeFeature
from app.domain.features.translate import TranslateFeature
from app.domain.graph import (
    GraphRuntime,
    NodeType,
    RuntimeServices,
    default_registry,
    validate_graph,
)
from app.domain.health import StoreHealth
from app.domain.metrics import NO_METRICS, Metrics
from app.domain.ports import (
    BuildStore,
    ChatFanOut,
    ChatModel,
    ChatOwnerCache,
    ChatRepository,
    ConnectionCounter,
    FlowRepository,
    TokenVerifier,
    Translator,
    TurnControl,
    TurnLease,
    TurnLog,
)
from app.domain.registry import ConnectionRegistry
from app.domain.rejections import Rejection
from app.domain.retry import RetryPolicy
from app.domain.session import SessionLimits, Sessions
from app.infra.auth import JWTVerifier
from app.infra.cache import CachedFlowRepository
from app.infra.llm.openai import OpenAIChatModel
from app.infra.llm.scripted import ScriptedChatModel
from app.infra.memory import (
    InProcessChannels,
    InProcessChatOwners,
    InProcessConnectionCounter,
    InProcessLease,
    InProcessTurnLog,
    MemoryStore,
)
from app.infra.plugins import iter_feature_entry_points, load_node_types
from app.infra.settings import Settings
from app.infra.sql.build_store import SqlBuildStore
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.repositories import SqlChatRepository, SqlFlowRepository
from app.infra.translate.libretranslate import LibreTranslateTranslator
from app.infra.translate.llm import ChatModelTranslator
from app.infra.translate.marker import MarkerTranslator

if TYPE_CHECKING:
    from app.infra.metrics import PrometheusMetrics

logger = logging.getLogger(__name__)

Closer = Callable[[], Awaitable[object]]
Check = Callable[[], Awaitable[object]]


@dataclass
class Adapters:
    """One implementation of every port the services need."""

    flows: FlowRepository
    chats: ChatRepository
    builds: BuildStore
    verifier: TokenVerifier
    chat_model: ChatModel
    translator: Translator
    lease: TurnLease
    log: TurnLog
    fanout: ChatFanOut
    control: TurnControl
    counter: ConnectionCounter
    #: Owners of claimed chats, shared by every process (none: each asks the database).
    owners: ChatOwnerCache | None = None
    #: The name of this process, in leases and connection counts.
    process_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: Whether this process is alone on its stores (the embedded default, no Redis).
    alone: bool = False
    #: Store name -> a call that fails if the store does not answer (``GET /ready``).
    checks: dict[str, Check] = field(default_factory=dict)
    closers: list[Closer] = field(default_factory=list)
    #: Where the services report (``GET /metrics``); by default nowhere.
    metrics: Metrics = NO_METRICS


def in_process_adapters(
    *,
    flows: FlowRepository,
    chats: ChatRepository,
    builds: BuildStore,
    verifier: TokenVerifier,
    chat_model: ChatModel,
    translator: Translator,
    store: MemoryStore | None = None,
    turn_log_ttl: float = 600.0,
) -> Adapters:
    """The in-process turn log, leases, fan-out and counts around the given stores: the
    embedded default's, and what unit tests use (several may share one ``store``; only then
    are chat owners remembered in it: one process alone has its admission's own memory)."""
    owners = None if store is None else InProcessChatOwners(store)
    store = store or MemoryStore()
    channels = InProcessChannels(store)
    return Adapters(
        flows=flows,
        chats=chats,
        builds=builds,
        verifier=verifier,
        chat_model=chat_model,
        translator=translator,
        lease=InProcessLease(store),
        log=InProcessTurnLog(store, ttl=turn_log_ttl, origin=channels),
        fanout=channels,
        control=channels,
        counter=InProcessConnectionCounter(store),
        owners=owners,
        alone=True,
    )


@dataclass
class Container:
    settings: Settings
    flows: FlowRepository
    chats: ChatRepository
    builds: BuildStore
    verifier: TokenVerifier
    chat_model: ChatModel
    translator: Translator
    runtime: GraphRuntime
    catalog: FlowCatalog
    features: FeatureRegistry
    connections: ConnectionRegistry
    admission: AdmissionService
    sessions: Sessions
    rooms: ChatRooms
    health: StoreHealth
    closers: list[Closer] = field(default_factory=list)
    metrics: Metrics = NO_METRICS
    #: Set on SIGTERM: new connections are refused with 1012 ``service restart``.
    draining: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Start the server's background work: store health, lease renewal, recovery."""
        await self.health.check_now()
        self._tasks.append(asyncio.get_running_loop().create_task(self.health.run()))
        self.rooms.start()

    async def check_stores(self) -> dict[str, bool]:
        """Whether each backing store answers, for ``GET /ready``."""
        return await self.health.check_now()

    async def drain(self) -> None:
        """Stop admitting, let running turns finish (the grace period; the rest end as
        ``interrupted``), then close every socket with 1012 ``service restart``: clients
        reconnect, to another process, and ``resume``."""
        self.draining = True
        grace = self.settings.shutdown_grace
        await asyncio.gather(*(feature.drain(grace) for feature in self.features))
        await asyncio.gather(
            *(connection.close(Rejection.SERVICE_RESTART) for connection in self.connections)
        )

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for feature in self.features:
            await _close_within(CLOSE_TIMEOUT, feature.aclose)
        for close in reversed(self.closers):
            await _close_within(CLOSE_TIMEOUT, close)


#: Seconds one feature or adapter may take to close at shutdown. One that takes longer is left
#: behind, by name in the log, so that a deploy never waits on a stuck one (the process is
#: exiting: what it held goes with it).
CLOSE_TIMEOUT = 10.0


async def _close_within(seconds: float, close: Closer) -> None:
    """``await close()``, bounded; a failure is reported and the next one is closed."""
    name = getattr(close, "__qualname__", repr(close))
    try:
        async with asyncio.timeout(seconds):
            await close()
    except TimeoutError:
        logger.error("closing %s took over %.0f s: left behind", name, seconds)
    except Exception:  # shutting down: report and go on closing the rest
        logger.exception("closing %s failed", name)


def compose(
    settings: Settings,
    adapters: Adapters,
    *,
    feature_factories: Iterable[FeatureFactory] | None = None,
    node_types: Iterable[NodeType[Any]] | None = None,
) -> Container:
    """The services of one process, over ``adapters``.

    Beside the built-ins, the features and node types of the installed entry points; or, when
    given (``app.testing`` does), exactly ``feature_factories`` and ``node_types``.
    """
    nodes = default_registry()
    if node_types is None:
        load_node_types(nodes)
    else:
        for node_type in node_types:
            nodes.register(node_type)
    runtime = GraphRuntime(
        nodes, RuntimeServices(chat_model=adapters.chat_model, translator=adapters.translator)
    )
    catalog = FlowCatalog(
        flows=adapters.flows,
        builds=adapters.builds,
        validate=lambda graph: validate_graph(graph, nodes),
        build_ttl=settings.build_ttl,
    )
    rooms = ChatRooms(
        chats=adapters.chats,
        log=adapters.log,
        lease=adapters.lease,
        fanout=adapters.fanout,
        control=adapters.control,
        turns=TurnServices(
            chats=adapters.chats,
            runtime=runtime,
            history_turns=settings.history_turns,
            turn_timeout=settings.turn_timeout,
            store_retry=RetryPolicy(budget=settings.store_retry, metrics=adapters.metrics),
            metrics=adapters.metrics,
        ),
        lease_ttl=settings.turn_lease,
        process_id=adapters.process_id,
        alone=adapters.alone,
    )
    features = FeatureRegistry()
    features.register(ChatFeature(rooms, shutdown_grace=settings.shutdown_grace))
    features.register(ComputeFeature())
    features.register(TranslateFeature(adapters.translator))
    services = FeatureServices(
        flows=adapters.flows,
        chats=adapters.chats,
        runtime=runtime,
        chat_model=adapters.chat_model,
        translator=adapters.translator,
    )
    factories = iter_feature_entry_points() if feature_factories is None else feature_factories
    for factory in factories:
        features.register(factory(services))

    health = StoreHealth(adapters.checks, metrics=adapters.metrics)
    connections = ConnectionRegistry()
    admission = AdmissionService(
        verifier=adapters.verifier,
        flows=adapters.flows,
        chats=adapters.chats,
        builds=adapters.builds,
        features=features,
        allowed_origins=frozenset(settings.allowed_origins),
        max_connections_per_user=settings.max_connections_per_user,
        counter=adapters.counter,
        stores_down=health.any_down,
        process_id=adapters.process_id,
        owners=adapters.owners,
        # Late-bound: the sessions, made next, need the admission.
        on_claim_lost=lambda chat_id: sessions.claim_lost(chat_id),
    )
    sessions = Sessions(
        features=features,
        verifier=adapters.verifier,
        admission=admission,
        registry=connections,
        limits=SessionLimits(
            messages_per_second=settings.messages_per_second,
            max_message_size=settings.max_message_size,
            send_buffer=settings.send_buffer,
            locale=settings.locale,
        ),
        metrics=adapters.metrics,
    )
    return Container(
        settings=settings,
        flows=adapters.flows,
        chats=adapters.chats,
        builds=adapters.builds,
        verifier=adapters.verifier,
        chat_model=adapters.chat_model,
        translator=adapters.translator,
        runtime=runtime,
        catalog=catalog,
        features=features,
        connections=connections,
        admission=admission,
        sessions=sessions,
        rooms=rooms,
        health=health,
        closers=adapters.closers,
        metrics=adapters.metrics,
    )


async def build_container(
    settings: Settings, sql: SQLAlchemyAsyncConfig | None = None, *, with_metrics: bool = False
) -> Container:
    return compose(settings, await build_adapters(settings, sql, with_metrics=with_metrics))


async def build_adapters(
    settings: Settings, sql: SQLAlchemyAsyncConfig | None = None, *, with_metrics: bool = False
) -> Adapters:
    """The real adapters the settings name; with ``with_metrics`` (the server), Prometheus
    metrics in a registry of their own (the CLI reports nothing, and imports no
    prometheus-client)."""
    metrics: PrometheusMetrics | None = None
    if with_metrics:
        from prometheus_client import CollectorRegistry

        from app.infra.metrics import PrometheusMetrics, process_exiting

        metrics = PrometheusMetrics(CollectorRegistry())
    closers: list[Closer] = [process_exiting] if metrics is not None else []
    checks: dict[str, Check] = {}
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.llm.timeout, connect=5.0))
    closers.append(http.aclose)

    sql = sql or make_sqlalchemy_config(settings.database_url)
    engine = sql.get_engine()
    closers.append(engine.dispose)
    sessions = sql.create_session_maker()
    flows = CachedFlowRepository(SqlFlowRepository(sessions), ttl=settings.flow_cache_ttl)
    chats = SqlChatRepository(sessions, engine)
    checks["database"] = chats.ping
    closers.append(chats.aclose)  # closed before the engine (closers run in reverse)
    verifier = JWTVerifier(settings.jwt, http_client=http)
    chat_model = _chat_model(settings, http)
    translator = _translator(settings, chat_model, http)

    if not settings.redis_url:
        adapters = in_process_adapters(
            flows=flows,
            chats=chats,
            builds=SqlBuildStore(sessions),
            verifier=verifier,
            chat_model=chat_model,
            translator=translator,
            turn_log_ttl=settings.turn_log_ttl,
        )
        adapters.checks, adapters.closers = checks, closers
        if metrics is not None:
            adapters.metrics = metrics
        return adapters

    # Imported here: a deployment without Redis (and the CLI on SQLite) never loads redis-py.
    from redis.asyncio.cluster import RedisCluster

    from app.infra.redis.build_store import RedisBuildStore
    from app.infra.redis.channels import RedisChannels
    from app.infra.redis.client import make_redis
    from app.infra.redis.counter import RedisConnectionCounter
    from app.infra.redis.keys import RedisKeys
    from app.infra.redis.lease import RedisLease
    from app.infra.redis.metrics import NO_BUS_METRICS
    from app.infra.redis.owners import RedisChatOwners
    from app.infra.redis.pipeline_batch import PipelineBatch
    from app.infra.redis.turn_log import RedisTurnLog

    process_id = uuid.uuid4().hex[:12]
    origin = process_id.encode()
    redis = make_redis(settings.redis_url, cluster=settings.redis_cluster)
    closers.append(redis.aclose)
    checks["redis"] = redis.ping
    keys = RedisKeys(settings.redis_prefix)
    channels = RedisChannels(redis, keys, origin=origin, metrics=metrics or NO_BUS_METRICS)
    log = RedisTurnLog(
        redis,
        keys,
        origin=origin,
        ttl=settings.turn_log_ttl,
        # A running turn's log outlives the longest a turn can take, its stores retried.
        live_ttl=settings.turn_timeout + settings.store_retry + settings.turn_log_ttl,
        cluster=isinstance(redis, RedisCluster),
        metrics=metrics or NO_BUS_METRICS,
        # A turn's batches go unpublished while no other process listens to its chat.
        listening=channels.listens,
    )
    closers.append(log.aclose)
    closers.append(channels.aclose)
    # The count and the owner lookups of concurrent admissions: one pipeline per batch.
    batch = PipelineBatch(redis)
    closers.append(batch.aclose)  # after the counter's (closers run in reverse)
    counter = RedisConnectionCounter(redis, keys, batch=batch)
    closers.append(counter.aclose)
    return Adapters(
        flows=flows,
        chats=chats,
        builds=RedisBuildStore(redis, settings.redis_prefix),
        verifier=verifier,
        chat_model=chat_model,
        translator=translator,
        lease=RedisLease(redis, keys),
        log=log,
        fanout=channels,
        control=channels,
        counter=counter,
        owners=RedisChatOwners(batch, keys),
        process_id=process_id,
        checks=checks,
        closers=closers,
        metrics=metrics or NO_METRICS,
    )


def _chat_model(settings: Settings, http: httpx.AsyncClient) -> ChatModel:
    llm = settings.llm
    if not llm.base_url:
        return ScriptedChatModel()
    return OpenAIChatModel(
        base_url=llm.base_url,
        api_key=llm.api_key,
        default_model=llm.model,
        timeout=llm.timeout,
        client=http,
    )


def _translator(settings: Settings, chat_model: ChatModel, http: httpx.AsyncClient) -> Translator:
    if settings.translator == "llm":
        return ChatModelTranslator(chat_model)
    if settings.translator == "libretranslate":
        if not settings.libretranslate_url:
            raise ValueError("FLOWGATE_TRANSLATOR=libretranslate needs FLOWGATE_LIBRETRANSLATE_URL")
        return LibreTranslateTranslator(
            base_url=settings.libretranslate_url,
            api_key=settings.libretranslate_api_key,
            timeout=settings.llm.timeout,
            client=http,
        )
    return MarkerTranslator()
