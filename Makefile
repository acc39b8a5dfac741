# Two commands for a new user: `make serve` and `make test`. Everything else is optional.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CHECKED := src tests bench

.DEFAULT_GOAL := help
.PHONY: help serve test test-fast test-heavy lint typecheck pytest fuzz openapi manifests install install-test clean dashboard screenshots

help: ## Show the available targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

serve: install ## Install, build the code image if missing, run the server on 127.0.0.1:8080
	$(BIN)/voidrun-server images build code
	$(BIN)/voidrun-server serve

test: install-test ## Install test deps (pip + apt), then lint, type-check and run the whole suite
	@$(MAKE) --no-print-directory lint typecheck pytest

test-fast: install-test ## Only the tiers that need no root, image or PostgreSQL: unit, inprocess
	$(BIN)/pytest -m "not (postgres or root or sandbox or slow or browser or fleet)" $(PYTEST_ARGS)

screenshots: install-test ## Refresh docs/img/dashboard-*.png (the browser tests take them)
	VOIDRUN_SCREENSHOTS=1 $(MAKE) --no-print-directory pytest PYTEST_ARGS="tests/browser $(PYTEST_ARGS)"

test-heavy: install-test ## The heavy tier: whole suites again through other paths (e.g. previews via the agent)
	VOIDRUN_TEST_HEAVY=1 $(MAKE) --no-print-directory pytest PYTEST_ARGS="-m heavy $(PYTEST_ARGS)"

lint: ## ruff check + format check
	$(BIN)/ruff check $(CHECKED)
	$(BIN)/ruff format --check $(CHECKED)

typecheck: ## mypy --strict on the package
	$(BIN)/mypy src/voidrun_server

pytest: ## Run pytest (starts a throwaway PostgreSQL; images cached in VOIDRUN_TEST_IMAGES_DIR)
	@# Every tier must run unless VOIDRUN_TEST_SKIP_TIERS names it (see CONTRIBUTING.md, "Tiers"):
	@# a failed image build or PostgreSQL start stops here, and a tier skip fails pytest.
	@skip=",$${VOIDRUN_TEST_SKIP_TIERS:-},"; skip=$${skip// /}; \
	images=$${VOIDRUN_TEST_IMAGES_DIR:-/var/tmp/voidrun-test-images}; \
	if [[ $$skip == *,sandbox,* || $$skip == *,all,* ]]; then \
	  echo "make test: not building the sandbox image (VOIDRUN_TEST_SKIP_TIERS names sandbox)"; \
	else \
	  echo "VOIDRUN_IMAGES_DIR=$$images $(BIN)/voidrun-server images build code"; \
	  VOIDRUN_IMAGES_DIR=$$images $(BIN)/voidrun-server images build code || { \
	    echo >&2 "make test: building the sandbox image into $$images failed (see above)."; \
	    echo >&2 "  The sandbox tier needs it: run as root with debootstrap and network access,"; \
	    echo >&2 "  or run without sandboxes: VOIDRUN_TEST_SKIP_TIERS=sandbox,slow make test"; \
	    exit 1; }; \
	fi; \
	pg_url=$${VOIDRUN_TEST_POSTGRES_URL:-}; \
	if [[ $$skip == *,postgres,* || $$skip == *,all,* ]]; then \
	  echo "make test: not starting PostgreSQL (VOIDRUN_TEST_SKIP_TIERS names postgres)"; \
	elif [ -z "$$pg_url" ]; then \
	  pg_url=$$(scripts/pg-test.sh start) && [ -n "$$pg_url" ] || { \
	    echo >&2 "make test: scripts/pg-test.sh start failed (see above), so the postgres tier"; \
	    echo >&2 "  cannot run. Install PostgreSQL (apt-get install postgresql), point"; \
	    echo >&2 "  VOIDRUN_TEST_POSTGRES_URL at a server where tests may create databases,"; \
	    echo >&2 "  or run without it: VOIDRUN_TEST_SKIP_TIERS=postgres make test"; \
	    exit 1; }; \
	fi; \
	echo "$(BIN)/pytest $(PYTEST_ARGS)  (PostgreSQL: $${pg_url:-none}, images: $$images)"; \
	VOIDRUN_TEST_POSTGRES_URL=$$pg_url VOIDRUN_TEST_IMAGES_DIR=$$images $(BIN)/pytest $(PYTEST_ARGS)

fuzz: install-test ## Fuzz the API with schemathesis for longer (FUZZ_EXAMPLES, default 200)
	VOIDRUN_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-200} \
	VOIDRUN_TEST_IMAGES_DIR=$${VOIDRUN_TEST_IMAGES_DIR:-/var/tmp/voidrun-test-images} \
	$(BIN)/pytest tests/security/test_fuzz.py

openapi: install ## Regenerate the committed openapi.json from the app
	$(BIN)/python -c 'import json; from voidrun_server.api.app import create_app; \
	from voidrun_server.config import Settings; \
	print(json.dumps(create_app(Settings(data_dir="/tmp/voidrun-openapi")).openapi(), indent=2, sort_keys=True))' > openapi.json

manifests: install-test ## Render deploy/kubernetes/voidrun.yaml from the Helm chart (tests/support/helmlite.py)
	$(BIN)/python -m tests.support.helmlite deploy/helm/voidrun deploy/helm/plain-values.yaml \
		> deploy/kubernetes/voidrun.yaml

install: $(VENV)/.installed dashboard ## Create .venv and install the server and the dashboard's assets

install-test: $(VENV)/.installed-test dashboard ## Create .venv and install the server with test tools

# The dashboard's third-party assets (xterm.js, uPlot) from the npm registry the host's npm
# config names, exactly as package-lock.json pins them; served from dashboard/node_modules.
dashboard: dashboard/node_modules/.package-lock.json

dashboard/node_modules/.package-lock.json: dashboard/package.json dashboard/package-lock.json
	cd dashboard && npm ci --no-audit --no-fund --ignore-scripts

$(VENV)/.installed: pyproject.toml scripts/install-system-deps.sh
	PYTHON=$(PYTHON) scripts/install-system-deps.sh runtime
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml scripts/install-system-deps.sh
	PYTHON=$(PYTHON) scripts/install-system-deps.sh test
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(VENV)/.installed $@

clean: ## Remove the virtualenv and caches (keeps your data dir)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
	scripts/pg-test.sh stop
