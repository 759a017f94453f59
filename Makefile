# `make train` and `make test` create .venv and install the project on first use: `make train` only what
# training needs, `make test` also the test, export and sweep extras (README, "Installation").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: train test test-slow gpu-check lint clean

$(VENV)/.base: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch and torchvision must come from the same build: pip resolves them together (README, "Installation").
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.dev: $(VENV)/.base
	$(PY) -m pip install -e '.[dev]'
	touch $@

train: $(VENV)/.base  ## quickstart: LeNet on scikit-learn's digits, 30 epochs (about 35 s on a 2-core CPU)
	$(PY) -m src.train experiment=quickstart $(ARGS)

# The default suite runs in one worker process per core (pytest-xdist): its tests use one thread each.
# The slow tests stay in one process: they start sweeps, launchers and torchrun that use every core.
test: $(VENV)/.dev  ## the offline test suite (about 5 minutes on 2 cores)
	$(PY) -m pytest -q -n auto $(ARGS)

test-slow: $(VENV)/.dev  ## the slow tests the default run leaves out (sweeps, launchers, torchrun, recipes, packaging)
	$(PY) -m pytest -q -m slow $(ARGS)

gpu-check: $(VENV)/.dev  ## on a CUDA machine: CUDA tests, benchmark, a 2-minute FER2013 training, DDP (about 8 min); elsewhere the skip table
	$(PY) -m src.gpu_check $(ARGS)

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf outputs .cache .pytest_cache
