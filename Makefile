# One command per job; each target depends on what it needs, so `make test` or `make demo`
# on a fresh clone creates the virtualenv, installs the project and finds a redis-server.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Touched after a successful install; older than pyproject.toml means install again.
STAMP := $(VENV)/.installed

.PHONY: setup redis test lint demo run bench chaos clean

setup: $(STAMP) redis

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev,bench]'
	touch $@

# The tests and the demo start their own redis-server on free loopback ports and never use a
# system service, so a service the package may start on 6379 is neither needed nor touched.
redis:
	@if command -v redis-server >/dev/null 2>&1; then \
		:; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "redis-server not found: installing Debian's redis-server package"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; \
		echo "note: ackworker's tests and demo start their own redis-server;" \
			"they do not use the service the package may have started on port 6379"; \
	else \
		echo "make: redis-server is not installed and cannot be installed here (needs root" \
			"and apt-get). Install it, for example 'sudo apt-get install redis-server'" \
			"(Debian/Ubuntu) or 'brew install redis' (macOS), then run make again." >&2; \
		exit 1; \
	fi

test: setup
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# The main job end to end, then the closed loop: `ackworker poll` finds what the stand-in
# holds, `ackworker run` acknowledges it, and nothing is left pending.
demo: setup
	$(BIN)/python -m worker.dev.demo
	$(BIN)/python -m worker.dev.closed_loop

run: $(STAMP)
	$(BIN)/ackworker --config config/ackworker.toml run

# Options go through BENCH_ARGS, e.g. `make bench BENCH_ARGS=--quick`; see bench/README.md.
bench: setup
	$(BIN)/python bench/run.py $(BENCH_ARGS)

# The reliability and security suite at full sizes (about 16 minutes on 2 cores); rewrites
# docs/reliability.md. `make test` runs every scenario in reduced form.
chaos: setup
	$(BIN)/python -m chaos.run --full

# Removes everything generated, the virtualenv included; `make setup` rebuilds it.
clean:
	rm -rf $(VENV) build dist .demo .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf *.egg-info
	find worker tests -name __pycache__ -type d -prune -exec rm -rf {} +
