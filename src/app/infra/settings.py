"""Settings, read from ``FLOWGATE_*`` environment variables once, at start-up.

Every value is checked here, in one place: its type, its range, its allowed values and, for
URLs, its scheme. A bad value is a :class:`SettingsError` whose message is one line that names
the variable (and never echoes a secret); every entry point reports it that way and exits 1.
Every setting is documented in the README's settings table; keep the two in step.

This module imports nothing but the standard library, so that reading settings costs a command
nothing (``app token issue`` reads them and should start at once).
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

VAR_DIR = Path(os.environ.get("FLOWGATE_VAR_DIR", "var"))
_DEV_SECRET_FILE = "jwt-secret"
MIN_SECRET_BYTES = 32

#: The database URL schemes flowgate runs on (the driver is part of the scheme).
DATABASE_SCHEMES = ("sqlite+aiosqlite", "postgresql+asyncpg")
#: What redis-py's ``from_url`` understands.
# ``redis+cluster``: a Redis Cluster seed node, as FLOWGATE_REDIS_CLUSTER=true says.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster")
HTTP_SCHEMES = ("http", "https")
#: pyjwt's signing algorithms ("none" is not one of them, on purpose).
JWT_ALGORITHMS = (
    "HS256",
    "HS384",
    "HS512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES256K",
    "ES384",
    "ES512",
    "EdDSA",
)
LOCALES = ("en", "zh")
TRANSLATORS = ("marker", "llm", "libretranslate")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "console")
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")

N = TypeVar("N", int, float)

#: ``FLOWGATE_*`` variables read somewhere else: ``app run``'s options and the module constant.
READ_ELSEWHERE = frozenset({"FLOWGATE_HOST", "FLOWGATE_PORT", "FLOWGATE_VAR_DIR"})
_read: set[str] = set()
logger = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting has a value flowgate cannot run with; the message says which and why."""


def _env(name: str, default: str | None = None) -> str | None:
    _read.add(f"FLOWGATE_{name}")
    value = os.environ.get(f"FLOWGATE_{name}")
    return value if value not in (None, "") else default


def _number(
    name: str,
    default: N,
    parse: Callable[[str], N],
    kind: str,
    *,
    minimum: N,
    inclusive: bool,
) -> N:
    raw = _env(name)
    if raw is None:
        return default
    bound = f"at least {minimum:g}" if inclusive else f"greater than {minimum:g}"
    try:
        value = parse(raw.strip())
    except ValueError:
        raise SettingsError(f"FLOWGATE_{name} must be {kind} {bound}, got {raw!r}") from None
    # ``value != value`` is NaN, which compares false with everything and so passes any range.
    if value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(f"FLOWGATE_{name} must be {kind} {bound}, got {raw!r}")
    if value < minimum or (not inclusive and value == minimum):
        raise SettingsError(f"FLOWGATE_{name} must be {kind} {bound}, got {raw!r}")
    return value


def _int(name: str, default: int, *, minimum: int = 1, inclusive: bool = True) -> int:
    """An integer, by default a positive one (``minimum=0`` allows 0)."""
    return _number(name, default, int, "an integer", minimum=minimum, inclusive=inclusive)


def _float(name: str, default: float, *, minimum: float = 0.0, inclusive: bool = False) -> float:
    """A number of seconds (or a rate), by default greater than 0 (``inclusive`` allows 0)."""
    return _number(name, default, float, "a number", minimum=minimum, inclusive=inclusive)


def _choice(name: str, default: str, allowed: tuple[str, ...], *, fold: bool = False) -> str:
    raw = _env(name, default) or default
    value = raw.strip().upper() if fold else raw.strip()
    if value not in allowed:
        raise SettingsError(f"FLOWGATE_{name} must be {_alternatives(allowed)}, got {raw!r}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingsError(f"FLOWGATE_{name} must be one of {'/'.join(_TRUE + _FALSE)}, got {raw!r}")


def _url(name: str, schemes: tuple[str, ...], default: str | None = None) -> str | None:
    """A URL whose scheme is one of ``schemes``. The message shows the scheme only: the rest
    of a database or Redis URL may hold a password."""
    raw = _env(name, default)
    if raw is None:
        return None
    value = raw.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or not rest:
        raise SettingsError(
            f"FLOWGATE_{name} must be a URL starting with {_alternatives(schemes, '://')}"
        )
    if scheme not in schemes:
        raise SettingsError(
            f"FLOWGATE_{name} must start with {_alternatives(schemes, '://')}, "
            f"not {scheme[:40]!r}://"
        )
    return value


def _list(name: str, default: str = "") -> tuple[str, ...]:
    raw = _env(name, default) or ""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _alternatives(values: tuple[str, ...], suffix: str = "") -> str:
    quoted = [f"'{value}{suffix}'" for value in values]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


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
    database_url: str = field(repr=False)  # may hold a password
    redis_url: str | None = field(repr=False)  # may hold a password
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


def _algorithms() -> tuple[str, ...]:
    algorithms = _list("JWT_ALGORITHMS", "HS256")
    if not algorithms:
        raise SettingsError("FLOWGATE_JWT_ALGORITHMS names no algorithm")
    for alg in algorithms:
        if alg not in JWT_ALGORITHMS:
            raise SettingsError(
                f"FLOWGATE_JWT_ALGORITHMS: {alg[:20]!r} is not a signing algorithm "
                f"(one of {', '.join(JWT_ALGORITHMS)})"
            )
    return algorithms


def _jwt_settings(environment: str) -> JWTSettings:
    algorithms = _algorithms()
    public_key = _env("JWT_PUBLIC_KEY")
    jwks_url = _url("JWT_JWKS_URL", HTTP_SCHEMES)
    if public_key is not None and "-----BEGIN" not in public_key:
        raise SettingsError("FLOWGATE_JWT_PUBLIC_KEY must be a PEM public key (-----BEGIN ...)")
    asymmetric = [alg for alg in algorithms if not alg.startswith("HS")]
    if public_key is not None:
        _check_public_key(public_key, asymmetric)
    if asymmetric and public_key is None and jwks_url is None:
        raise SettingsError(
            f"FLOWGATE_JWT_ALGORITHMS has {', '.join(asymmetric)}: "
            "set FLOWGATE_JWT_PUBLIC_KEY or FLOWGATE_JWT_JWKS_URL"
        )
    return JWTSettings(
        secret=_jwt_secret(environment, algorithms),
        algorithms=algorithms,
        public_key=public_key,
        jwks_url=jwks_url,
        audience=_env("JWT_AUDIENCE"),
        issuer=_env("JWT_ISSUER"),
        leeway=_float("JWT_LEEWAY", 10.0, inclusive=True),
    )


def _check_public_key(public_key: str, algorithms: list[str]) -> None:
    """The key parses for each algorithm it serves (as the verifier will parse it), so that a
    bad key stops every entry point here, in one line, and not the server's start-up later.
    pyjwt (and cryptography) are imported only when a public key is configured."""
    from jwt.algorithms import get_default_algorithms
    from jwt.exceptions import PyJWTError

    available = get_default_algorithms()
    for alg in algorithms:
        if alg not in available:
            raise SettingsError(f"FLOWGATE_JWT_ALGORITHMS: {alg} needs the cryptography package")
        try:
            available[alg].prepare_key(public_key)
        except (PyJWTError, ValueError, TypeError):
            raise SettingsError(
                f"FLOWGATE_JWT_PUBLIC_KEY is not a PEM public key that {alg} can use"
            ) from None


def _jwt_secret(environment: str, algorithms: tuple[str, ...]) -> str | None:
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
    try:
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
    except OSError as exc:
        raise SettingsError(
            f"FLOWGATE_VAR_DIR: cannot keep the development JWT secret in {path}: {exc.strerror}"
        ) from None


def _translator() -> tuple[str, str | None]:
    translator = _choice("TRANSLATOR", "marker", TRANSLATORS)
    url = _url("LIBRETRANSLATE_URL", HTTP_SCHEMES)
    if translator == "libretranslate" and url is None:
        raise SettingsError("FLOWGATE_TRANSLATOR=libretranslate needs FLOWGATE_LIBRETRANSLATE_URL")
    return translator, url


def _origins() -> tuple[str, ...]:
    origins = _list("ALLOWED_ORIGINS")
    for origin in origins:
        scheme, sep, host = origin.partition("://")
        if not sep or scheme not in HTTP_SCHEMES or not host or "/" in host:
            raise SettingsError(
                "FLOWGATE_ALLOWED_ORIGINS must list origins such as 'https://app.example' "
                f"(scheme and host, no path), got {origin[:80]!r}"
            )
    return origins


def load_settings() -> Settings:
    """Read and check every ``FLOWGATE_*`` setting; raise :class:`SettingsError` (one line,
    naming the variable) on the first bad one."""
    _read.clear()
    settings = _read_settings()
    for name in sorted(set(os.environ) - _read - READ_ELSEWHERE):
        if name.startswith("FLOWGATE_"):
            # Not an error: a typo is likelier than a setting of a newer flowgate, but either
            # way the server can run. It is said, though, rather than silently ignored.
            logger.warning("%s is not a flowgate setting; it is ignored", name)
    return settings


def _database_url() -> str:
    url = _url("DATABASE_URL", DATABASE_SCHEMES, f"sqlite+aiosqlite:///{VAR_DIR}/flowgate.db")
    assert url is not None  # it has a default
    if url.startswith("sqlite"):
        path = url.partition("://")[2].removeprefix("/").partition("?")[0]
        if path in ("", ":memory:") or path.startswith("file:"):
            # Each connection would have a database of its own (the migrations' another one).
            raise SettingsError(
                "FLOWGATE_DATABASE_URL: the embedded database must be a file, "
                "sqlite+aiosqlite:///path/to/flowgate.db"
            )
    return url


def _read_settings() -> Settings:
    environment = (_env("ENVIRONMENT", "development") or "development").strip()
    translator, libretranslate_url = _translator()
    model = (_env("LLM_MODEL", "gpt-4o-mini") or "gpt-4o-mini").strip()
    return Settings(
        environment=environment,
        database_url=_database_url(),
        redis_url=_url("REDIS_URL", REDIS_SCHEMES),
        redis_prefix=_env("REDIS_PREFIX", "flowgate:") or "",
        jwt=_jwt_settings(environment),
        locale=_choice("LOCALE", "en", LOCALES),
        allowed_origins=_origins(),
        max_message_size=_int("MAX_MESSAGE_SIZE", 65536),
        build_ttl=_int("BUILD_TTL", 600),
        max_connections_per_user=_int("MAX_CONNECTIONS_PER_USER", 20),
        messages_per_second=_float("MESSAGES_PER_SECOND", 20.0),
        turn_timeout=_float("TURN_TIMEOUT", 120.0),
        history_turns=_int("HISTORY_TURNS", 5, minimum=0),
        flow_cache_ttl=_float("FLOW_CACHE_TTL", 2.0, inclusive=True),
        shutdown_grace=_float("SHUTDOWN_GRACE", 10.0, inclusive=True),
        ws_ping_interval=_float("WS_PING_INTERVAL", 20.0),
        ws_ping_timeout=_float("WS_PING_TIMEOUT", 20.0),
        translator=translator,
        libretranslate_url=libretranslate_url,
        libretranslate_api_key=_env("LIBRETRANSLATE_API_KEY"),
        llm=LLMSettings(
            base_url=_url("LLM_BASE_URL", HTTP_SCHEMES),
            api_key=_env("LLM_API_KEY"),
            model=model,
            timeout=_float("LLM_TIMEOUT", 30.0),
        ),
        log_level=_choice("LOG_LEVEL", "INFO", LOG_LEVELS, fold=True),
        turn_lease=_float("TURN_LEASE", 5.0),
        turn_log_ttl=_int("TURN_LOG_TTL", 600),
        store_retry=_float("STORE_RETRY", 30.0, inclusive=True),
        send_buffer=_int("SEND_BUFFER", 1 << 20),
        redis_cluster=_bool("REDIS_CLUSTER", False),
        log_format=_choice(
            "LOG_FORMAT", "console" if environment == "development" else "json", LOG_FORMATS
        ),
    )


def load_settings_or_exit() -> Settings:
    """:func:`load_settings` for an entry point that has no CLI to report with (the ASGI
    factory under uvicorn): a bad setting is one line on stderr and exit status 1, not a
    traceback."""
    try:
        return load_settings()
    except SettingsError as exc:
        _exit(str(exc))


def _exit(message: str) -> NoReturn:
    print(f"Error: {message}", file=sys.stderr)
    raise SystemExit(1)
