# The two set-up commands of the README: `make serve` and `make test`. Both build .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: serve test lint bench install

$(BIN)/tas: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/tas

install: $(BIN)/tas

serve: install
	$(BIN)/tas serve

# The suite's test files run in parallel (pytest-xdist), a file's tests together on one worker so
# the stacks a module starts once are shared by its tests: most of a test's time is spent waiting
# on the real servers and workers it starts, so two processes fill two cores. At most 4 workers:
# each starts its own Redis and PostgreSQL. pytest exits 5 when it collects no test: not a failure.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile || [ $$? -eq 5 ]

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install
	$(BIN)/python bench/train_throughput.py
