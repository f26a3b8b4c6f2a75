# Every target creates/uses .venv itself, so a fresh clone needs only `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PAYHUB_HOME ?= $(CURDIR)/var

.PHONY: install run test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@$(BIN)/payhub pki init
	@echo
	@echo "payhub is starting. In another terminal, try:"
	@echo
	@echo "  curl --cert $(PAYHUB_HOME)/pki/clients/acme.pem --key $(PAYHUB_HOME)/pki/clients/acme.key \\"
	@echo "       --cacert $(PAYHUB_HOME)/pki/ca.pem https://localhost:8443/v1/ping"
	@echo
	@echo "  metrics: curl http://127.0.0.1:9108/metrics"
	@echo
	exec $(BIN)/payhub serve

test: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m load.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
