"""Settings: defaults, the development secret, and every bad value refused in one line."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from app.infra import settings as settings_module
from app.infra.settings import SettingsError, load_settings


@functools.cache
def _rsa_public_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("FLOWGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(settings_module, "VAR_DIR", tmp_path / "var")


def test_defaults_are_the_embedded_development_setup(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.is_development
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.redis_url is None
    assert (settings.max_message_size, settings.build_ttl, settings.locale) == (65536, 600, "en")
    assert settings.jwt.algorithms == ("HS256",)


def test_development_secret_is_generated_once_and_shared(tmp_path: Path) -> None:
    first = load_settings().jwt.secret
    second = load_settings().jwt.secret
    assert first and first == second and len(first) >= 32
    assert (tmp_path / "var" / "jwt-secret").read_text().strip() == first
    assert first not in repr(load_settings())  # secrets stay out of reprs and logs


def test_outside_development_a_missing_or_weak_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWGATE_ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="FLOWGATE_JWT_SECRET is required"):
        load_settings()
    monkeypatch.setenv("FLOWGATE_JWT_SECRET", "short")
    with pytest.raises(SettingsError, match="too weak"):
        load_settings()
    monkeypatch.setenv("FLOWGATE_JWT_SECRET", "s" * 48)
    assert load_settings().jwt.secret == "s" * 48


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("LOCALE", "fr", "FLOWGATE_LOCALE"),
        ("MAX_MESSAGE_SIZE", "big", "must be an integer"),
        ("TRANSLATOR", "babelfish", "FLOWGATE_TRANSLATOR"),
        ("TURN_TIMEOUT", "soon", "must be a number"),
    ],
)
def test_bad_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"FLOWGATE_{name}", value)
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_lists_are_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_ALLOWED_ORIGINS", "https://a.example, https://b.example,")
    monkeypatch.setenv("FLOWGATE_JWT_ALGORITHMS", "RS256")
    monkeypatch.setenv("FLOWGATE_JWT_PUBLIC_KEY", _rsa_public_pem())
    settings = load_settings()
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.jwt.secret is None  # no HMAC: no secret generated


def test_every_setting_has_its_documented_default() -> None:
    settings = load_settings()
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert (settings.redis_prefix, settings.redis_cluster) == ("flowgate:", False)
    assert settings.jwt.leeway == 10.0
    assert settings.allowed_origins == ()
    assert (settings.max_connections_per_user, settings.messages_per_second) == (20, 20.0)
    assert (settings.turn_timeout, settings.history_turns, settings.flow_cache_ttl) == (
        120.0,
        5,
        2.0,
    )
    assert (settings.shutdown_grace, settings.ws_ping_interval, settings.ws_ping_timeout) == (
        10.0,
        20.0,
        20.0,
    )
    assert (settings.translator, settings.libretranslate_url) == ("marker", None)
    assert (settings.llm.base_url, settings.llm.model, settings.llm.timeout) == (
        None,
        "gpt-4o-mini",
        30.0,
    )
    assert settings.log_level == "INFO"
    assert (settings.turn_lease, settings.turn_log_ttl, settings.store_retry) == (5.0, 600, 30.0)
    assert settings.send_buffer == 1 << 20
    assert settings.log_format == "console"  # development's default


def test_log_format_defaults_to_json_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_ENVIRONMENT", "production")
    monkeypatch.setenv("FLOWGATE_JWT_SECRET", "s" * 48)
    assert load_settings().log_format == "json"
    monkeypatch.setenv("FLOWGATE_LOG_FORMAT", "console")
    assert load_settings().log_format == "console"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("MAX_MESSAGE_SIZE", "1", ("max_message_size", 1)),
        ("BUILD_TTL", "30", ("build_ttl", 30)),
        ("MAX_CONNECTIONS_PER_USER", "1", ("max_connections_per_user", 1)),
        ("MESSAGES_PER_SECOND", "0.5", ("messages_per_second", 0.5)),
        ("TURN_TIMEOUT", "1.5", ("turn_timeout", 1.5)),
        ("HISTORY_TURNS", "0", ("history_turns", 0)),
        ("FLOW_CACHE_TTL", "0", ("flow_cache_ttl", 0.0)),
        ("SHUTDOWN_GRACE", "0", ("shutdown_grace", 0.0)),
        ("WS_PING_INTERVAL", "5", ("ws_ping_interval", 5.0)),
        ("WS_PING_TIMEOUT", " 7 ", ("ws_ping_timeout", 7.0)),
        ("TURN_LEASE", "0.5", ("turn_lease", 0.5)),
        ("TURN_LOG_TTL", "60", ("turn_log_ttl", 60)),
        ("STORE_RETRY", "0", ("store_retry", 0.0)),
        ("SEND_BUFFER", "4096", ("send_buffer", 4096)),
        ("LOG_LEVEL", "debug", ("log_level", "DEBUG")),
        ("LOG_FORMAT", "json", ("log_format", "json")),
        ("LOCALE", "zh", ("locale", "zh")),
        ("REDIS_URL", "rediss://:pw@cache:6380/1", ("redis_url", "rediss://:pw@cache:6380/1")),
        (
            "DATABASE_URL",
            "postgresql+asyncpg://u:pw@db/fg",
            ("database_url", "postgresql+asyncpg://u:pw@db/fg"),
        ),
    ],
)
def test_good_values_are_read(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, expected: tuple[str, object]
) -> None:
    monkeypatch.setenv(f"FLOWGATE_{name}", value)
    attribute, wanted = expected
    assert getattr(load_settings(), attribute) == wanted


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE", "Yes"])
def test_redis_cluster_accepts_true(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLOWGATE_REDIS_CLUSTER", value)
    assert load_settings().redis_cluster is True


@pytest.mark.parametrize("value", ["false", "0", "no", "False"])
def test_redis_cluster_accepts_false(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FLOWGATE_REDIS_CLUSTER", value)
    assert load_settings().redis_cluster is False


@pytest.mark.parametrize(
    ("name", "value"),
    [
        # Sizes and counts: positive integers.
        ("MAX_MESSAGE_SIZE", "0"),
        ("MAX_MESSAGE_SIZE", "-1"),
        ("MAX_MESSAGE_SIZE", "1.5"),
        ("BUILD_TTL", "0"),
        ("MAX_CONNECTIONS_PER_USER", "0"),
        ("HISTORY_TURNS", "-1"),
        ("TURN_LOG_TTL", "0"),
        ("TURN_LOG_TTL", "1.5"),
        ("SEND_BUFFER", "0"),
        ("SEND_BUFFER", "-4096"),
        # Rates and timeouts: numbers greater than 0.
        ("MESSAGES_PER_SECOND", "0"),
        ("MESSAGES_PER_SECOND", "-5"),
        ("MESSAGES_PER_SECOND", "nan"),
        ("MESSAGES_PER_SECOND", "inf"),
        ("TURN_TIMEOUT", "0"),
        ("TURN_TIMEOUT", "-1"),
        ("WS_PING_INTERVAL", "0"),
        ("WS_PING_TIMEOUT", "-3"),
        ("LLM_TIMEOUT", "0"),
        ("TURN_LEASE", "0"),
        ("TURN_LEASE", "soon"),
        # Waits that may be 0, never negative.
        ("FLOW_CACHE_TTL", "-1"),
        ("SHUTDOWN_GRACE", "-0.5"),
        ("STORE_RETRY", "-1"),
        ("JWT_LEEWAY", "-10"),
        # Allowed values.
        ("REDIS_CLUSTER", "maybe"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "LOUD"),
        ("LOCALE", "fr"),
        ("TRANSLATOR", "babelfish"),
        ("JWT_ALGORITHMS", "none"),
        ("JWT_ALGORITHMS", "HS256,XX999"),
        ("JWT_ALGORITHMS", ","),
        ("ALLOWED_ORIGINS", "app.example"),
        ("ALLOWED_ORIGINS", "https://app.example/path"),
        # URL schemes.
        ("DATABASE_URL", "mysql+aiomysql://u@db/fg"),
        ("DATABASE_URL", "postgresql://u@db/fg"),
        ("DATABASE_URL", "sqlite:///var/fg.db"),
        ("DATABASE_URL", "flowgate.db"),
        # An in-memory database is one per connection: the embedded one must be a file.
        ("DATABASE_URL", "sqlite+aiosqlite:///:memory:"),
        ("DATABASE_URL", "sqlite+aiosqlite:///"),
        ("DATABASE_URL", "sqlite+aiosqlite:///file:fg?mode=memory&uri=true"),
        ("REDIS_URL", "http://cache:6379"),
        ("REDIS_URL", "cache:6379"),
        ("LLM_BASE_URL", "ftp://models.example/v1"),
        ("JWT_JWKS_URL", "jwks.example/keys"),
        ("LIBRETRANSLATE_URL", "libre.example"),
    ],
)
def test_each_bad_value_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(f"FLOWGATE_{name}", value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    message = str(raised.value)
    assert f"FLOWGATE_{name}" in message
    assert "\n" not in message


def test_numbers_say_what_they_must_be(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_MESSAGES_PER_SECOND", "0")
    with pytest.raises(SettingsError, match=r"must be a number greater than 0.*'0'"):
        load_settings()
    monkeypatch.delenv("FLOWGATE_MESSAGES_PER_SECOND")
    monkeypatch.setenv("FLOWGATE_HISTORY_TURNS", "-2")
    with pytest.raises(SettingsError, match=r"must be an integer at least 0.*'-2'"):
        load_settings()


def test_a_url_with_a_password_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWGATE_DATABASE_URL", "mysql://admin:hunter2@db/fg")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "'mysql'://" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "sqlite+aiosqlite://" in str(raised.value)
    assert "postgresql+asyncpg://" in str(raised.value)


def test_urls_with_passwords_stay_out_of_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_DATABASE_URL", "postgresql+asyncpg://u:hunter2@db/fg")
    monkeypatch.setenv("FLOWGATE_REDIS_URL", "redis://:hunter3@cache:6379/0")
    monkeypatch.setenv("FLOWGATE_LLM_API_KEY", "sk-hunter4")
    text = repr(load_settings())
    assert "hunter2" not in text and "hunter3" not in text and "hunter4" not in text


def test_libretranslate_needs_its_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_TRANSLATOR", "libretranslate")
    with pytest.raises(SettingsError, match="FLOWGATE_LIBRETRANSLATE_URL"):
        load_settings()
    monkeypatch.setenv("FLOWGATE_LIBRETRANSLATE_URL", "http://libre.example:5000")
    assert load_settings().libretranslate_url == "http://libre.example:5000"


def test_public_key_algorithms_need_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_JWT_ALGORITHMS", "RS256")
    with pytest.raises(SettingsError, match="FLOWGATE_JWT_PUBLIC_KEY or FLOWGATE_JWT_JWKS_URL"):
        load_settings()
    monkeypatch.setenv("FLOWGATE_JWT_PUBLIC_KEY", "not a pem")
    with pytest.raises(SettingsError, match="FLOWGATE_JWT_PUBLIC_KEY must be a PEM"):
        load_settings()
    monkeypatch.setenv(
        "FLOWGATE_JWT_PUBLIC_KEY", "-----BEGIN PUBLIC KEY-----\nbm9wZQ==\n-----END PUBLIC KEY-----"
    )
    with pytest.raises(SettingsError, match="not a PEM public key that RS256 can use"):
        load_settings()
    monkeypatch.setenv("FLOWGATE_JWT_PUBLIC_KEY", _rsa_public_pem())
    assert load_settings().jwt.public_key == _rsa_public_pem()
    monkeypatch.delenv("FLOWGATE_JWT_PUBLIC_KEY")
    monkeypatch.setenv("FLOWGATE_JWT_JWKS_URL", "https://id.example/jwks.json")
    assert load_settings().jwt.jwks_url == "https://id.example/jwks.json"


def test_an_unwritable_var_dir_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(settings_module, "VAR_DIR", blocker / "var")  # under a file: no dir
    with pytest.raises(SettingsError, match="FLOWGATE_VAR_DIR"):
        load_settings()


def test_load_settings_or_exit_prints_one_line_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWGATE_MESSAGES_PER_SECOND", "0")
    with pytest.raises(SystemExit) as exited:
        settings_module.load_settings_or_exit()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FLOWGATE_MESSAGES_PER_SECOND" in err


def test_an_unknown_flowgate_variable_is_warned_about_not_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FLOWGATE_MESAGES_PER_SECOND", "0")  # a typo
    monkeypatch.setenv("FLOWGATE_PORT", "9000")  # read by `app run`
    with caplog.at_level("WARNING", logger="app.infra.settings"):
        settings = load_settings()
    assert settings.messages_per_second == 20.0
    warned = [record.getMessage() for record in caplog.records]
    assert warned == ["FLOWGATE_MESAGES_PER_SECOND is not a flowgate setting; it is ignored"]
