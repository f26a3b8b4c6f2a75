# Every target creates/uses .venv itself, so a fresh clone needs only `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
export PAYHUB_HOME ?= $(CURDIR)/var

.PHONY: install run test verify lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/payhub pki init
	exec $(BIN)/payhub serve --sandbox

test: $(STAMP)
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

bench: $(STAMP)
	$(BIN)/python -m load.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
