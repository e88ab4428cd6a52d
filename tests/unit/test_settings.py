"""Settings: defaults, the development secret, and refusing to run with a weak one."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.infra import settings as settings_module
from app.infra.settings import SettingsError, load_settings


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
    monkeypatch.setenv("FLOWGATE_JWT_PUBLIC_KEY", "pem")
    settings = load_settings()
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.jwt.secret is None  # no HMAC: no secret generated
