# spinefl: `make demo` runs the main job, `make test` runs the whole test suite.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The torch to install when none is importable. On this project's CPU machines
# torch==2.13.0 resolves to a local CPU build; override on other machines.
TORCH  ?= torch==2.13.0

# Offline installs (a hospital has no internet): `make wheelhouse` gathers every wheel of
# requirements.lock into wheelhouse/ on a machine with an index (same OS, CPU and Python as
# the hospital's); `make setup WHEELHOUSE=wheelhouse` installs from that folder alone.
LOCK       := requirements.lock
WHEELHOUSE ?=
# pip with no configuration and no index: the wheelhouse is all it sees.
OFFLINE    := env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL \
              PIP_CONFIG_FILE=/dev/null

.PHONY: setup demo test lint clean wheelhouse lock

setup: $(VENV)/.installed

ifeq ($(strip $(WHEELHOUSE)),)
# --system-site-packages lets an existing (e.g. CUDA) torch of the host show
# through; torch is installed only when none can be imported.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e ".[dev]"
	touch $@
else
# Everything from the wheelhouse, at the lock's versions, in a venv that sees nothing of
# the host's packages; no index is asked for anything.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv --clear $(VENV)
	$(OFFLINE) $(BIN)/pip install --no-index --find-links $(WHEELHOUSE) -r $(LOCK)
	$(OFFLINE) $(BIN)/pip install --no-index --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@
endif

# The lock's torch is the CPU build (2.13.0+cpu): where the index in use lacks it, name
# PyTorch's CPU wheel index in WHEEL_INDEX (or `make lock TORCH=...` for another build).
WHEEL_INDEX ?=
wheelhouse: $(LOCK)
	$(PYTHON) -m pip wheel --wheel-dir wheelhouse \
	    $(if $(WHEEL_INDEX),--extra-index-url $(WHEEL_INDEX)) -r $(LOCK)

# Rewrites the lock from a clean venv: torch, then spinefl[dev], then pip freeze.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install $(TORCH)
	.lock-venv/bin/pip install -e ".[dev]"
	{ sed -n '/^#/p' $(LOCK) 2>/dev/null || true; } > $(LOCK).new
	.lock-venv/bin/pip freeze --all --exclude-editable | grep -v '^pip==' >> $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .lock-venv

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
	rm -rf $(VENV) runs data wheelhouse
