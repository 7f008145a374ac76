# Everything a fresh machine with Python 3.11+ needs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run test lint format bench profile clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("Wicket needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The npm packages the conformance tests run (tests/conformance/package-lock.json).
NODE_DIR   := tests/conformance
NODE_STAMP := $(NODE_DIR)/node_modules/.installed

$(NODE_STAMP): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || \
		{ echo "make test needs Node.js 20+ and npm (the MCP conformance tests run npm packages); install them first, e.g. apt-get install nodejs npm" >&2; exit 1; }
	@node -e 'process.exit(Number(process.versions.node.split(".")[0]) < 20 ? 1 : 0)' || \
		{ echo "make test needs Node.js 20+, found $$(node --version)" >&2; exit 1; }
	cd $(NODE_DIR) && npm ci --no-audit --no-fund
	touch $@

install: $(STAMP)

## Start the bundled demo MCP server with Wicket in front of it (embedded defaults).
run: $(STAMP)
	$(BIN)/wicket demo

## Lint, then run the whole test suite.
test: $(STAMP) $(NODE_STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/ruff format --check proxy tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check proxy tests bench
	$(BIN)/hadolint Dockerfile

format: $(STAMP)
	$(BIN)/ruff format proxy tests bench
	$(BIN)/ruff check --fix proxy tests bench

## Direct call vs bare pass-through vs pass-through plus the essentials vs Wicket (memory and Redis stores) in one run, then revocation across replicas.
bench: $(STAMP)
	$(BIN)/python bench/run.py --stores memory,redis --essentials --repeat 3
	$(BIN)/python bench/revocation.py
	$(BIN)/python bench/revocation.py --load 8

## Where Wicket's own CPU goes (cProfile, read path, memory store); see bench/README.md.
profile: $(STAMP)
	$(BIN)/python bench/hotspots.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis $(NODE_DIR)/node_modules
