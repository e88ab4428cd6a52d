# flowgate: `make run` serves on 127.0.0.1:8000; `make test` runs every test.
# Both install what they need first (uv, then the locked dependencies).

UV := $(shell command -v uv 2>/dev/null || echo "$(HOME)/.local/bin/uv")
export UV_LINK_MODE := copy
# Bytecode compiled once at install: with PYTHONDONTWRITEBYTECODE set (as on CI machines) every
# process would otherwise compile ~1,400 modules again, seconds per CLI command.
export UV_COMPILE_BYTECODE := 1

.PHONY: install run test bench lint services

$(UV):
	python3 -m pip install --quiet --user uv || python3 -m pip install --quiet uv

install: $(UV)
	$(UV) sync --quiet
	$(UV) run --quiet python -m compileall -q src

run: install
	$(UV) run app database upgrade --no-prompt
	$(UV) run app run

test: install
	$(UV) run pytest

bench: install
	$(UV) sync --quiet --group bench
	$(UV) run python -m bench

lint: install
	$(UV) run ruff check src tests examples bench
	$(UV) run mypy src examples/sentiment/src

# Starts the local PostgreSQL and Redis that the integration tests use, if they are not up.
services:
	bash .ci/services
