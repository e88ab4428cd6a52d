"""The extension API (app.extend) and the fakes (app.testing) are what docs/extending.md says.

A name added to or removed from either module without its row in the guide's reference fails
here; so does a guide whose examples no longer run.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap
import types
from pathlib import Path

import msgspec
import pytest

import app.extend
import app.testing
from app.extend import SettingsError, extension_settings

ROOT = Path(__file__).resolve().parents[2]
GUIDE = (ROOT / "docs" / "extending.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", GUIDE, flags=re.S)


def documented(module: str) -> set[str]:
    """The names in the guide's reference table of ``module``."""
    section = GUIDE.split(f"### `{module}`\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))


@pytest.mark.parametrize("module", [app.extend, app.testing], ids=lambda m: m.__name__)
def test_the_public_names_are_the_documented_ones(module: types.ModuleType) -> None:
    names = set(module.__all__)
    undocumented = names - documented(module.__name__)
    gone = documented(module.__name__) - names
    assert not undocumented, f"add to docs/extending.md's reference: {sorted(undocumented)}"
    assert not gone, f"documented but not in {module.__name__}.__all__: {sorted(gone)}"
    assert len(module.__all__) == len(names)


@pytest.mark.parametrize("module", [app.extend, app.testing], ids=lambda m: m.__name__)
def test_every_public_class_and_function_has_its_own_docstring(module: types.ModuleType) -> None:
    missing = []
    for name in module.__all__:
        value = getattr(module, name)
        if inspect.isclass(value):
            doc = value.__dict__.get("__doc__")  # its own, not a base class's
        elif inspect.isfunction(value):
            doc = value.__doc__
        else:
            continue
        if not (doc or "").strip():
            missing.append(name)
    assert not missing


def test_the_example_extension_imports_only_the_public_modules() -> None:
    texts = [path.read_text() for path in (ROOT / "examples").rglob("*.py")] + BLOCKS
    imported = set()
    for text in texts:
        imported |= set(re.findall(r"^(?:from|import) (app(?:\.\w+)*)", text, flags=re.M))
    assert imported == {"app.extend", "app.testing"}


async def test_the_guides_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide's modules (``# acme_flowgate/<name>.py``) make a package; its tests pass."""
    package = tmp_path / "acme_flowgate"
    package.mkdir()
    (package / "__init__.py").write_text("")
    tests = []
    for block in BLOCKS:
        first = block.splitlines()[0]
        if first.startswith("# acme_flowgate/"):
            (package / first.removeprefix("# acme_flowgate/")).write_text(block)
        elif "def test_" in block:
            tests.append(block)
    assert {p.name for p in package.iterdir()} == {"__init__.py", "feature.py", "nodes.py"}
    assert len(tests) == 2
    monkeypatch.syspath_prepend(str(tmp_path))
    ran = []
    try:
        for index, block in enumerate(tests):
            namespace: dict[str, object] = {}
            exec(compile(textwrap.dedent(block), f"<guide test {index}>", "exec"), namespace)
            for name, function in namespace.items():
                if name.startswith("test_") and inspect.isfunction(function):
                    result = function()
                    if inspect.isawaitable(result):
                        await result
                    ran.append(name)
    finally:
        for name in [m for m in sys.modules if m.split(".")[0] == "acme_flowgate"]:
            del sys.modules[name]
    assert len(ran) == 3


class AcmeSettings(msgspec.Struct, frozen=True):
    api_key: str
    timeout: float = 10.0
    words: tuple[str, ...] = ()
    model: str | None = None
    strict: bool = False


def test_extension_settings_come_from_prefixed_variables() -> None:
    environ = {
        "ACME_API_KEY": "k",
        "ACME_TIMEOUT": "2.5",
        "ACME_WORDS": "a, b,,c",
        "ACME_MODEL": "",  # empty: the default
        "ACME_STRICT": "true",
        "OTHER_TIMEOUT": "9",
    }
    assert extension_settings("ACME_", AcmeSettings, environ) == AcmeSettings(
        api_key="k", timeout=2.5, words=("a", "b", "c"), model=None, strict=True
    )


def test_extension_settings_read_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACME_API_KEY", "from-env")
    assert extension_settings("ACME_", AcmeSettings).api_key == "from-env"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({}, "ACME_API_KEY is required"),
        ({"ACME_API_KEY": "k", "ACME_TIMEOUT": "soon"}, "in ACME_TIMEOUT"),
        ({"ACME_API_KEY": "k", "ACME_STRICT": "maybe"}, "in ACME_STRICT"),
    ],
)
def test_a_bad_extension_setting_names_its_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        extension_settings("ACME_", AcmeSettings, environ)
