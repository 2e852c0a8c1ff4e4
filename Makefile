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

# Test workers (pytest-xdist): the end-to-end tests wait on processes and the network for
# much of their time, so two workers share 2 cores well; each takes its share of threads
# (tests/conftest.py, which also keeps tests sharing an expensive fixture on one worker).
WORKERS ?= auto

test: setup
	$(BIN)/python -m pytest -n $(WORKERS) --dist loadgroup

lint: setup
	$(BIN)/python -m ruff check .

clean:
	rm -rf $(VENV) runs data
