# Every target creates/uses .venv itself, so a fresh clone needs only `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PAYHUB_HOME ?= $(CURDIR)/var

.PHONY: install deps-system deps-node run demo-app test verify lint format bench docker-test clean

$(STAMP): pyproject.toml sdk/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet -e sdk/python
	touch $(STAMP)

install: $(STAMP)

# The Bill Pay example app (examples/billpay, console script `payhub-billpay`), editable; the SDK it calls is
# installed with the venv. --no-deps: what it needs is in '.[dev]' already.
BILLPAY_STAMP := $(VENV)/.billpay-stamp
$(BILLPAY_STAMP): $(STAMP) examples/billpay/pyproject.toml sdk/python/pyproject.toml
	$(BIN)/python -m pip install --quiet --no-deps -e examples/billpay
	touch $(BILLPAY_STAMP)

# System packages the tests use: promtool and prometheus (Debian's `prometheus`) for tests/ops;
# chromium for the Bill Pay browser test (tests/billpay, Playwright driving Debian's browser).
# Idempotent: apt-get runs only when a binary is missing, and only as root or with password-less sudo;
# elsewhere it says so and the tests that need them skip with the reason.
SYSTEM_BINARIES := promtool prometheus chromium
SYSTEM_PACKAGES := prometheus chromium
deps-system:
	@missing=; for b in $(SYSTEM_BINARIES); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
	  echo "deps-system: no apt-get; install$$missing yourself (tests that need them skip)"; exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; \
	else echo "deps-system: not root and no password-less sudo; install $(SYSTEM_PACKAGES) yourself (tests that need$$missing skip)"; exit 0; fi; \
	echo "deps-system: installing $(SYSTEM_PACKAGES) (for$$missing)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null \
	  || { $$sudo apt-get update -q -o DPkg::Lock::Timeout=300 >/dev/null && $$sudo apt-get install -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends $(SYSTEM_PACKAGES) >/dev/null; } \
	  || echo "deps-system: apt-get could not install $(SYSTEM_PACKAGES) (tests that need$$missing skip)"

# axe-core from the npm registry for tests/billpay (pinned in its package.json). Idempotent: npm runs only
# when axe is missing; without npm the browser test skips with the reason.
AXE := tests/billpay/node_modules/axe-core/axe.min.js
deps-node:
	@if [ -f $(AXE) ]; then exit 0; fi; \
	if ! command -v npm >/dev/null 2>&1; then echo "deps-node: no npm; tests/billpay skips"; exit 0; fi; \
	cd tests/billpay && npm install --no-audit --no-fund --silent || echo "deps-node: npm install failed (tests/billpay skips)"

run: $(STAMP)
	$(BIN)/payhub pki init
	exec $(BIN)/payhub serve --sandbox

# The Bill Pay app on http://127.0.0.1:8080/ (BILLPAY_ARGS="--port 8081 …"); it starts `payhub serve --sandbox`
# first when nothing answers at https://localhost:8443.
demo-app: $(BILLPAY_STAMP)
	$(BIN)/payhub pki init
	exec $(BIN)/payhub-billpay $(BILLPAY_ARGS)

test: $(STAMP) $(BILLPAY_STAMP) deps-system deps-node
	$(BIN)/pytest $(PYTEST_ARGS)

# Long profiles: the model-based conservation checker (tests/model: hundreds of steps, >= 20 kill -9),
# schemathesis over the whole API (tests/fuzz) and the attack matrix, which prints its figures table.
verify: $(STAMP)
	PAYHUB_MODEL_PROFILE=long PAYHUB_FUZZ_PROFILE=long $(BIN)/pytest -s tests/model tests/fuzz tests/security $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Open-loop benchmark of the card payment against references A and B (docs/performance.md):
# make bench [QUICK=1] [SCALE=<payments to preload>] [WORKERS=<n>] [BENCH_ARGS="--profile --webhooks …"]
bench: $(STAMP)
	$(BIN)/python -m load.bench $(if $(filter-out 0,$(QUICK)),--quick) $(if $(SCALE),--scale $(SCALE)) --workers $(or $(WORKERS),1) $(BENCH_ARGS)

# Slow, not part of `make test`: build the Docker image (base from debootstrap, no registry needed) and run it
# against a fresh database on the local PostgreSQL: /healthz, /v1/ping over mTLS, healthcheck, JSON-only logs.
docker-test: $(STAMP)
	VENV=$(VENV) deploy/docker-test.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
