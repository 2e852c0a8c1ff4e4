# spinefl: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch to install when none is importable. On this project's CPU machines
# torch==2.13.0 resolves to a local CPU build; override on other machines.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test lint clean

setup: $(VENV)/.installed

# --system-site-packages lets an existing (e.g. CUDA) torch of the host show
# through; torch is installed only when none can be imported.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/spinefl simulate --out runs/demo --force

# Test workers (pytest-xdist): the end-to-end tests wait on processes, polls and heartbeats
# for much of their time (two workers on 2 cores kept them busy 62% of the run), so there
# are three workers for every two cores (18.6 min against 20.1 on 2 cores, 2026-11-30);
# each takes its share of threads (tests/conftest.py, which also keeps tests sharing an
# expensive fixture on one worker).
WORKERS ?= $(shell $(PYTHON) -c "import os; print(max(1, (os.cpu_count() or 1) * 3 // 2))")

test: setup
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup

lint: setup
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) runs data
