# lungct: `make run` runs the main job end to end, `make test` runs the test suite.
# Both create ./.venv and install what they need on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Real data: DATA=..., else $LUNGCT_DATA, else ./data, else the development subset beside the checkout.
DATA ?= $(firstword $(LUNGCT_DATA) $(wildcard data ../shared/datasets/iq-othnccd))
OUT ?= runs/main
ARGS ?=

.PHONY: run test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(BIN)/python -m pip install -q -e ".[dev,download,federated,pacs]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/lungct run --out $(OUT) $(if $(DATA),--data $(DATA)) $(ARGS)

# Test-only JavaScript (axe-core for the browser accessibility scan), pinned by package-lock.json.
# Without npm the scan is skipped with a reason; when npm is there and `npm ci` fails, make fails.
node_modules/.installed: package.json package-lock.json
	@if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "WARNING: npm not found: the axe-core accessibility scan will be skipped"; fi

test: $(VENV)/.installed node_modules/.installed
	$(BIN)/ruff check src tests benchmarks *.py
	$(BIN)/ruff format --check src tests benchmarks *.py
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks *.py
	$(BIN)/ruff format --check src tests benchmarks *.py

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_audit.py
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) runs
