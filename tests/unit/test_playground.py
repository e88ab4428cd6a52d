"""The playground's files and how they are served: no external URL, a strict CSP, no token
outside its input. (The page itself runs in Chromium in tests/e2e/test_playground_e2e.py.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.testing import TestClient

from app.api.asgi import create_app
from app.api.playground import STATIC_DIR, content_security_policy, make_playground_router
from app.infra.settings import load_settings

TEXT_FILES = sorted(p for p in STATIC_DIR.iterdir() if p.suffix in {".html", ".js", ".css"})
HOST = "playground.test:8000"


@pytest.fixture
def client() -> Iterator[TestClient[Litestar]]:
    app = Litestar(route_handlers=[make_playground_router()])
    with TestClient(app, base_url=f"http://{HOST}") as test_client:
        yield test_client


def directives(policy: str) -> dict[str, str]:
    parts = (d.strip().split(" ", 1) for d in policy.split(";"))
    return {p[0]: (p[1] if len(p) > 1 else "") for p in parts}


def test_the_page_is_html_with_a_strict_policy(client: TestClient[Litestar]) -> None:
    response = client.get("/playground")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>flowgate playground</title>" in response.text
    policy = directives(response.headers["content-security-policy"])
    assert policy == {
        "default-src": "'none'",
        "script-src": "'self'",
        "style-src": "'self'",
        "img-src": "'self'",
        "connect-src": f"'self' ws://{HOST} wss://{HOST}",
        "base-uri": "'none'",
        "form-action": "'none'",
        "frame-ancestors": "'none'",
    }
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "no-cache" in response.headers["cache-control"]


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("playground.js", "text/javascript"),
        ("playground.css", "text/css"),
        ("favicon.png", "image/png"),
    ],
)
def test_its_assets_are_served_with_the_same_policy(
    client: TestClient[Litestar], name: str, content_type: str
) -> None:
    response = client.get(f"/playground/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.content == (STATIC_DIR / name).read_bytes()
    assert "default-src 'none'" in response.headers["content-security-policy"]


def test_nothing_else_is_served(client: TestClient[Litestar]) -> None:
    assert client.get("/playground/missing.js").status_code == 404
    assert client.get("/playground/../__init__.py").status_code == 404
    assert client.get("/playground/%2e%2e/__init__.py").status_code == 404


def test_a_host_header_that_is_not_a_plain_host_is_not_reflected() -> None:
    assert "ws://[::1]:8000 wss://[::1]:8000" in content_security_policy("[::1]:8000")
    for host in ("evil; script-src *", "a b", "x\r\ny: z", "", None):
        assert directives(content_security_policy(host))["connect-src"] == "'self'"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the chat routes' path parameters
def test_create_app_serves_the_playground(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWGATE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("FLOWGATE_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/flowgate.db")
    monkeypatch.setenv("FLOWGATE_JWT_SECRET", "unit-" + "x" * 40)
    app = create_app(load_settings())
    assert app.route_reverse("playground/index") == "/playground"


@pytest.mark.parametrize("path", TEXT_FILES, ids=lambda p: p.name)
def test_the_files_name_no_other_host(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"(?i)https?://", text)
    assert not re.search(r"(?i)(?:src|href|action)\s*=\s*[\"']?//", text)  # protocol-relative
    if path.suffix == ".css":
        assert "url(" not in text and "@import" not in text


def test_the_page_loads_only_its_own_files() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    references = re.findall(r"(?:src|href)=\"([^\"]+)\"", html)
    assert references, "the page references no script or stylesheet"
    for reference in references:
        assert reference.startswith("/playground/"), reference
        assert (STATIC_DIR / reference.removeprefix("/playground/")).is_file(), reference
    assert "<script>" not in html and " style=" not in html and " on" not in html.lower()


def test_the_script_finds_every_element_and_keeps_the_token_in_its_input() -> None:
    html = (STATIC_DIR / "index.html").read_text()
    script = (STATIC_DIR / "playground.js").read_text()
    ids = set(re.findall(r"\bid=\"([^\"]+)\"", html))
    used = set(re.findall(r"\$\(\"([^\"]+)\"\)", script))
    assert used and used <= ids, used - ids
    for forbidden in (
        "localStorage",
        "sessionStorage",
        "indexedDB",
        "document.cookie",
        "pushState",
        "replaceState",
        "location.href",
        "location.search",
        "location.hash",
        "innerHTML",
    ):
        assert forbidden not in script, forbidden
    # No input would be submitted, were the form ever submitted.
    assert not re.search(r"<(?:input|textarea|select)[^>]*\sname=", html)
