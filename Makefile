# `make run` and `make test` work on a fresh machine with Python 3.11+:
# the first use creates .venv and installs the project into it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# `make run` needs only the broker and its runtime dependencies (no test tools, no drivers).
RUN_STAMP := $(VENV)/.installed-runtime

# Test-only browser tools: Debian's chromium (apt) and, from npm, React, TypeScript,
# terser and esbuild for tests/browser (pinned by the committed package-lock.json).
BROWSER_JS    := tests/browser/js
BROWSER_STAMP := $(BROWSER_JS)/node_modules/.installed

.PHONY: run test test-fast bench bench-setup setup browser-deps clean cluster

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

$(RUN_STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (set PYTHON=...)")'
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then echo "$(VENV): installed with the test tools already"; \
	else test -x $(BIN)/python || $(PYTHON) -m venv $(VENV); \
	     $(BIN)/python -m pip install --quiet --upgrade pip && $(BIN)/python -m pip install --quiet -e .; fi
	@touch $@

# Development settings (broker serve --dev): the development secrets unless you set yours
# (WS_AUTH_TOKEN=demo-token, BROKER_API_KEY=dev-api-key, a JWT secret), loopback unless HOST
# is set, pages on http://localhost:* may connect, JWTs join every job; the banner lists it
# all, and .broker-dev.env (git-ignored) tells the broker CLI in this folder while it runs.
run: $(RUN_STAMP)
	$(BIN)/broker serve --config config.toml --dev

browser-deps: $(BROWSER_STAMP)
	./scripts/ensure-chromium

$(BROWSER_STAMP): $(BROWSER_JS)/package-lock.json $(BROWSER_JS)/package.json
	./scripts/ensure-node
	cd $(BROWSER_JS) && npm ci --no-audit --no-fund --ignore-scripts
	@touch $@

test: $(STAMP) browser-deps
	./scripts/ensure-nginx
	./scripts/ensure-postgres
	./scripts/ensure-redis
	$(BIN)/ruff check broker actors tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# The pure and in-process tests (no cluster, PostgreSQL, browser or slow test; markers in
# pyproject.toml): well under 30 s, for the edit-test loop. `make test` runs everything.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not cluster and not postgres and not browser and not slow"

# The Node socket.io baseline (npm ci in benchmarks/, from its lockfile); only the benchmarks need it.
bench-setup: benchmarks/node_modules/.package-lock.json

benchmarks/node_modules/.package-lock.json: benchmarks/package.json benchmarks/package-lock.json
	./scripts/ensure-node
	cd benchmarks && npm ci --no-audit --no-fund

# A demo cluster: Redis, PostgreSQL, three nodes, nginx round-robin in front (docs/CLUSTER.md). Ctrl-C stops it.
cluster: $(STAMP)
	./scripts/ensure-redis
	./scripts/ensure-postgres
	./scripts/ensure-nginx
	$(BIN)/python -m tests.demo_cluster

# The load scenarios at full size (a few minutes; both CPUs). Results: tests/load/results/.
bench: $(STAMP) bench-setup
	$(BIN)/python -m tests.load publish --compare --subscribers 1
	$(BIN)/python -m tests.load publish --compare --subscribers 1000
	$(BIN)/python -m tests.load publish --compare --subscribers 1000 --publishers 16 --depth 8
	$(BIN)/python -m tests.load fanout --compare --subscribers 1000
	$(BIN)/python -m tests.load fanout --compare --subscribers 5000
	$(BIN)/python -m tests.load connect --compare --connections 5000
	$(BIN)/python -m tests.load connect --jwt --connections 5000
	$(BIN)/python -m tests.load chat
	$(BIN)/python -m tests.load slow --subscribers 500 --rate 100
	$(BIN)/python -m tests.load churn --rate 100
	$(BIN)/python -m tests.load proxy --clients 10
	$(BIN)/python -m tests.load compression --subscribers 1000

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis benchmarks/node_modules $(BROWSER_JS)/node_modules \
	       $(BROWSER_JS)/build tests/browser/artifacts
