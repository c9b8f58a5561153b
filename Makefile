# Two commands on a fresh machine:  make serve   and   make test
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
POLICY ?= configs/quickstart.yaml

.PHONY: serve test install dev lint typecheck unit integration e2e bench clean

$(BIN)/fairlane: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(BIN)/fairlane
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/fairlane
dev: $(VENV)/.dev

## Envoy + the worker + two simulated engines, OpenAI API on :8000
serve: install
	$(BIN)/fairlane serve --config $(POLICY)

## Lint, types, unit and integration tests (real Envoy, worker and simulator)
test: dev lint typecheck
	$(BIN)/pytest tests/unit tests/integration -q

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot follow setuptools' package-dir mapping of an editable install, so it
# checks a tree of symlinks laid out as the installed `fairlane` package.
typecheck: dev
	rm -rf build/typecheck && mkdir -p build/typecheck/fairlane
	for f in fairlane/*.py; do ln -s ../../../$$f build/typecheck/fairlane/; done
	for d in extproc engines envoy bench; do ln -s ../../../$$d build/typecheck/fairlane/$$d; done
	cd build/typecheck && ../../$(BIN)/mypy --config-file ../../pyproject.toml -p fairlane

unit: dev
	$(BIN)/pytest tests/unit -q

integration: dev
	$(BIN)/pytest tests/integration -q

clean:
	rm -rf build .venv *.egg-info
