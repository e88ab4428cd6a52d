"""What the app does once when it starts, in-process (the served process: tests/e2e)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from litestar.testing import TestClient

from app.api.asgi import FULL_COLLECTION_AFTER, create_app
from app.infra.settings import load_settings


def test_what_exists_at_start_is_kept_out_of_the_collectors_walks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWGATE_VAR_DIR", str(tmp_path))
    for name in ("FLOWGATE_DATABASE_URL", "FLOWGATE_REDIS_URL", "FLOWGATE_ENVIRONMENT"):
        monkeypatch.delenv(name, raising=False)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    try:
        with TestClient(create_app(load_settings())) as client:
            assert client.get("/health").status_code == 200
            assert gc.get_freeze_count() > 10_000
            # Full collections wait for many more of the middle generation's (see asgi.py).
            young, middle, full = gc.get_threshold()
            assert (young, middle) == thresholds[:2] and full == FULL_COLLECTION_AFTER > 10
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
