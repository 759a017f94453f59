# `make train` and `make test` create .venv and install the project on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: train test test-slow lint clean

$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# torch and torchvision must come from the same registry build (see README, "Installation").
	$(PY) -m pip install -e '.[dev]'
	touch $@

train: $(VENV)/.installed  ## quickstart: LeNet on scikit-learn's digits, about a minute on a 2-core CPU
	$(PY) -m src.train experiment=quickstart $(ARGS)

test: $(VENV)/.installed  ## the offline test suite (about 5 minutes on 2 cores)
	$(PY) -m pytest -q $(ARGS)

test-slow: $(VENV)/.installed  ## the slow tests the default run leaves out (sweeps, launchers, torchrun, recipes)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf outputs .cache .pytest_cache
