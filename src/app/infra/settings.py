"""Settings, read from ``FLOWGATE_*`` environment variables once, at start-up.

Every setting is documented in the README's settings table; keep the two in step.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

VAR_DIR = Path(os.environ.get("FLOWGATE_VAR_DIR", "var"))
_DEV_SECRET_FILE = "jwt-secret"
MIN_SECRET_BYTES = 32


class SettingsError(ValueError):
    """A setting has a value flowgate cannot run with; the message says which and why."""


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"FLOWGATE_{name}")
    return value if value not in (None, "") else default


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"FLOWGATE_{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"FLOWGATE_{name} must be a number, got {raw!r}") from None


def _list(name: str, default: str = "") -> tuple[str, ...]:
    raw = _env(name, default) or ""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


@dataclass(frozen=True)
class JWTSettings:
    secret: str | None = field(repr=False)
    algorithms: tuple[str, ...]
    public_key: str | None
    jwks_url: str | None
    audience: str | None
    issuer: str | None
    leeway: float


@dataclass(frozen=True)
class LLMSettings:
    base_url: str | None
    api_key: str | None = field(repr=False)
    model: str
    timeout: float


@dataclass(frozen=True)
class Settings:
    environment: str
    database_url: str
    redis_url: str | None
    redis_prefix: str
    jwt: JWTSettings
    locale: str
    allowed_origins: tuple[str, ...]
    max_message_size: int
    build_ttl: int
    max_connections_per_user: int
    messages_per_second: float
    turn_timeout: float
    history_turns: int
    flow_cache_ttl: float
    shutdown_grace: float
    ws_ping_interval: float
    ws_ping_timeout: float
    translator: str
    libretranslate_url: str | None
    libretranslate_api_key: str | None = field(repr=False)
    llm: LLMSettings
    log_level: str
    #: Seconds a running turn's claim on its chat lives unless renewed (renewed every third).
    turn_lease: float = 5.0
    #: Seconds a turn's frames stay in the turn log after it ended (for ``resume``).
    turn_log_ttl: int = 600
    #: Seconds flowgate keeps retrying to store a message while the database is away.
    store_retry: float = 30.0
    #: Bytes of frames a connection may have waiting to be written before it is closed 4008.
    send_buffer: int = 1 << 20
    #: Use redis-py's cluster client and sharded pub/sub.
    redis_cluster: bool = False
    #: ``json`` or ``console``.
    log_format: str = "console"

    @property
    def is_development(self) -> bool:
        return self.environment == "development"


def _jwt_secret(
    environment: str, algorithms: tuple[str, ...], public_key: str | None, jwks_url: str | None
) -> str | None:
    secret = _env("JWT_SECRET")
    uses_hmac = any(alg.startswith("HS") for alg in algorithms)
    if not uses_hmac:
        return secret
    if secret is None:
        if environment != "development":
            raise SettingsError("FLOWGATE_JWT_SECRET is required outside development")
        return _dev_secret()
    if len(secret.encode()) < MIN_SECRET_BYTES and environment != "development":
        raise SettingsError(
            f"FLOWGATE_JWT_SECRET is too weak: use at least {MIN_SECRET_BYTES} bytes "
            "(for example `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )
    return secret


def _dev_secret() -> str:
    """One secret per checkout, kept under ``./var/`` so that the server and the CLI agree."""
    path = VAR_DIR / _DEV_SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    # O_EXCL: if two processes race to create it, the loser reads the winner's secret.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secret)
    return secret


def load_settings() -> Settings:
    environment = _env("ENVIRONMENT", "development") or "development"
    algorithms = _list("JWT_ALGORITHMS", "HS256")
    public_key = _env("JWT_PUBLIC_KEY")
    jwks_url = _env("JWT_JWKS_URL")
    locale = _env("LOCALE", "en") or "en"
    if locale not in ("en", "zh"):
        raise SettingsError(f"FLOWGATE_LOCALE must be 'en' or 'zh', got {locale!r}")
    translator = _env("TRANSLATOR", "marker") or "marker"
    if translator not in ("marker", "llm", "libretranslate"):
        raise SettingsError(
            f"FLOWGATE_TRANSLATOR must be 'marker', 'llm' or 'libretranslate', got {translator!r}"
        )
    return Settings(
        environment=environment,
        database_url=_env("DATABASE_URL", f"sqlite+aiosqlite:///{VAR_DIR}/flowgate.db") or "",
        redis_url=_env("REDIS_URL"),
        redis_prefix=_env("REDIS_PREFIX", "flowgate:") or "",
        jwt=JWTSettings(
            secret=_jwt_secret(environment, algorithms, public_key, jwks_url),
            algorithms=algorithms,
            public_key=public_key,
            jwks_url=jwks_url,
            audience=_env("JWT_AUDIENCE"),
            issuer=_env("JWT_ISSUER"),
            leeway=_float("JWT_LEEWAY", 10.0),
        ),
        locale=locale,
        allowed_origins=_list("ALLOWED_ORIGINS"),
        max_message_size=_int("MAX_MESSAGE_SIZE", 65536),
        build_ttl=_int("BUILD_TTL", 600),
        max_connections_per_user=_int("MAX_CONNECTIONS_PER_USER", 20),
        messages_per_second=_float("MESSAGES_PER_SECOND", 20.0),
        turn_timeout=_float("TURN_TIMEOUT", 120.0),
        history_turns=_int("HISTORY_TURNS", 5),
        flow_cache_ttl=_float("FLOW_CACHE_TTL", 2.0),
        shutdown_grace=_float("SHUTDOWN_GRACE", 10.0),
        ws_ping_interval=_float("WS_PING_INTERVAL", 20.0),
        ws_ping_timeout=_float("WS_PING_TIMEOUT", 20.0),
        translator=translator,
        libretranslate_url=_env("LIBRETRANSLATE_URL"),
        libretranslate_api_key=_env("LIBRETRANSLATE_API_KEY"),
        llm=LLMSettings(
            base_url=_env("LLM_BASE_URL"),
            api_key=_env("LLM_API_KEY"),
            model=_env("LLM_MODEL", "gpt-4o-mini") or "gpt-4o-mini",
            timeout=_float("LLM_TIMEOUT", 30.0),
        ),
        log_level=_env("LOG_LEVEL", "INFO") or "INFO",
        turn_lease=_float("TURN_LEASE", 5.0),
        turn_log_ttl=_int("TURN_LOG_TTL", 600),
        store_retry=_float("STORE_RETRY", 30.0),
        send_buffer=_int("SEND_BUFFER", 1 << 20),
        redis_cluster=(_env("REDIS_CLUSTER", "false") or "false").lower() in ("1", "true", "yes"),
        log_format=_env("LOG_FORMAT", "console" if environment == "development" else "json")
        or "console",
    )
