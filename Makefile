# avaproto — the commands. `make demo` and `make test` set up .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint typecheck pytest soak protos spec bench clean help

help:
	@echo "make demo       start the motion extension and send it a clip"
	@echo "make test       ruff, mypy --strict and the whole test suite"
	@echo "make soak       16 streams x 5000 frames against real servers: nothing may leak"
	@echo "make protos     regenerate avaproto/_generated from protos/"
	@echo "make spec       regenerate spec/README.md and spec/state-machine.md"
	@echo "make bench      the benchmarks: pixels and motion against a baseline, then the"
	@echo "                transport side by side with grpcio's servers and client"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/avaproto demo

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check avaproto tests spec bench
	$(BIN)/ruff format --check avaproto tests spec bench
	$(BIN)/pytest -q -p no:cacheprovider tests/test_layers.py

typecheck: $(STAMP)
	$(BIN)/mypy --strict avaproto bench tests/typed_api.py

pytest: $(STAMP)
	$(BIN)/pytest

soak: $(STAMP)
	AVAPROTO_SOAK_FRAMES=5000 $(BIN)/pytest -q -s -p no:cacheprovider --timeout=600 tests/test_soak.py

protos: $(STAMP)
	$(BIN)/python -m avaproto.codegen

spec: $(STAMP)
	$(BIN)/python -m spec.catalogue render

bench: $(STAMP)
	$(BIN)/python -m avaproto.bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
