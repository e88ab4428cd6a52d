"""The composition root: builds every adapter from settings and hands them to the domain.

Nothing else constructs adapters. The API's lifespan, the CLI and the tests all come here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from advanced_alchemy.config import SQLAlchemyAsyncConfig

from app.domain.admission import AdmissionService
from app.domain.catalog import FlowCatalog
from app.domain.chat import ChatFeature
from app.domain.features import FeatureRegistry, FeatureServices
from app.domain.features.compute import ComputeFeature
from app.domain.features.translate import TranslateFeature
from app.domain.graph import GraphRuntime, RuntimeServices, default_registry, validate_graph
from app.domain.ports import (
    BuildStore,
    ChatBus,
    ChatModel,
    ChatRepository,
    FlowRepository,
    TokenVerifier,
    Translator,
)
from app.domain.registry import ConnectionRegistry
from app.domain.rejections import Rejection
from app.infra.auth import JWTVerifier
from app.infra.bus.memory import InProcessChatBus
from app.infra.cache import CachedFlowRepository
from app.infra.llm.openai import OpenAIChatModel
from app.infra.llm.scripted import ScriptedChatModel
from app.infra.plugins import iter_feature_entry_points, load_node_types
from app.infra.settings import Settings
from app.infra.sql.build_store import SqlBuildStore
from app.infra.sql.config import make_sqlalchemy_config
from app.infra.sql.health import ping_database
from app.infra.sql.repositories import SqlChatRepository, SqlFlowRepository
from app.infra.translate.libretranslate import LibreTranslateTranslator
from app.infra.translate.llm import ChatModelTranslator
from app.infra.translate.marker import MarkerTranslator

logger = logging.getLogger(__name__)


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
    checks: dict[str, Callable[[], Awaitable[object]]] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[object]]] = field(default_factory=list)
    #: Set on SIGTERM: new connections are refused with 1012 ``service restart``.
    draining: bool = False

    async def check_stores(self) -> dict[str, bool]:
        """Whether each backing store answers, for ``GET /ready``."""
        results: dict[str, bool] = {}
        for name, check in self.checks.items():
            try:
                async with asyncio.timeout(2):
                    await check()
                results[name] = True
            except Exception as exc:  # whatever the driver raises, the store is not ready
                logger.warning("readiness: %s does not answer: %s", name, exc)
                results[name] = False
        return results

    async def drain(self) -> None:
        """Stop admitting, let running work finish (the grace period), then close every socket
        with 1012 ``service restart``: clients reconnect, to another process, and ``resume``."""
        self.draining = True
        grace = self.settings.shutdown_grace
        await asyncio.gather(*(feature.drain(grace) for feature in self.features))
        await asyncio.gather(
            *(connection.close(Rejection.SERVICE_RESTART) for connection in self.connections)
        )

    async def aclose(self) -> None:
        for feature in self.features:
            await feature.aclose()
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:  # shutting down: report and go on closing the rest
                logger.exception("closing an adapter failed")


async def build_container(
    settings: Settings, sql: SQLAlchemyAsyncConfig | None = None
) -> Container:
    closers: list[Callable[[], Awaitable[object]]] = []
    checks: dict[str, Callable[[], Awaitable[object]]] = {}
    http = httpx.AsyncClient(timeout=httpx.Timeout(settings.llm.timeout, connect=5.0))
    closers.append(http.aclose)

    sql = sql or make_sqlalchemy_config(settings.database_url)
    engine = sql.get_engine()
    closers.append(engine.dispose)
    sessions = sql.create_session_maker()
    sql_flows = SqlFlowRepository(sessions)
    checks["database"] = functools.partial(ping_database, engine)
    flows = CachedFlowRepository(sql_flows, ttl=settings.flow_cache_ttl)
    chats = SqlChatRepository(sessions)

    builds: BuildStore
    bus: ChatBus
    if settings.redis_url:
        # Imported here: a deployment without Redis never loads redis-py.
        from app.infra.redis.build_store import RedisBuildStore
        from app.infra.redis.chat_bus import RedisChatBus
        from app.infra.redis.client import make_redis

        redis = make_redis(settings.redis_url)
        closers.append(redis.aclose)
        checks["redis"] = redis.ping
        builds = RedisBuildStore(redis, settings.redis_prefix)
        redis_bus = RedisChatBus(redis, settings.redis_prefix)
        closers.append(redis_bus.aclose)
        bus = redis_bus
    else:
        builds = SqlBuildStore(sessions)
        bus = InProcessChatBus()

    verifier = JWTVerifier(settings.jwt, http_client=http)
    chat_model = _chat_model(settings, http)
    translator = _translator(settings, chat_model, http)

    nodes = default_registry()
    load_node_types(nodes)
    runtime = GraphRuntime(nodes, RuntimeServices(chat_model=chat_model, translator=translator))
    catalog = FlowCatalog(
        flows=flows,
        builds=builds,
        validate=lambda graph: validate_graph(graph, nodes),
        build_ttl=settings.build_ttl,
    )

    features = FeatureRegistry()
    features.register(
        ChatFeature(
            chats=chats,
            bus=bus,
            runtime=runtime,
            history_turns=settings.history_turns,
            turn_timeout=settings.turn_timeout,
            shutdown_grace=settings.shutdown_grace,
        )
    )
    features.register(ComputeFeature())
    features.register(TranslateFeature(translator))
    services = FeatureServices(
        flows=flows, chats=chats, runtime=runtime, chat_model=chat_model, translator=translator
    )
    for factory in iter_feature_entry_points():
        features.register(factory(services))

    connections = ConnectionRegistry()
    admission = AdmissionService(
        verifier=verifier,
        flows=flows,
        chats=chats,
        builds=builds,
        features=features,
        allowed_origins=frozenset(settings.allowed_origins),
        max_connections_per_user=settings.max_connections_per_user,
        open_connections=connections.open_connections,
    )
    return Container(
        settings=settings,
        flows=flows,
        chats=chats,
        builds=builds,
        verifier=verifier,
        chat_model=chat_model,
        translator=translator,
        runtime=runtime,
        catalog=catalog,
        features=features,
        connections=connections,
        admission=admission,
        checks=checks,
        closers=closers,
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
