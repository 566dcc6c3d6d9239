# facegate: `make demo` and `make test` do all set-up on a fresh machine.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint bench bench-peer models clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "facegate needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/facegate demo --config config/demo.toml

test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: setup
	$(BIN)/ruff check edge tests
	$(BIN)/mypy --strict edge
	$(BIN)/lint-imports

bench: setup
	@mkdir -p out
	$(BIN)/facegate bench --json out/bench.json

# The dlib/face_recognition peer lives in its own venv (../peer-venv), never in facegate's deps.
bench-peer: setup
	@test -x ../peer-venv/bin/python || $(BIN)/python bench/peer_face_recognition.py --setup
	@mkdir -p out
	$(BIN)/python bench/peer_face_recognition.py --json out/bench-peer.json
	$(BIN)/python bench/peer_face_recognition.py --size 640x480 --json out/bench-peer-640x480.json

models: setup
	$(BIN)/python models/tools/verify.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache
