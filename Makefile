# README command one: `make demo`. Command two: `make test`. Everything else follows from `setup`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo demo-tiny serve test test-fast lint clean bench-aggregation

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (flwr 1.42)")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: setup
	$(PY) manage.py demo

demo-tiny: setup
	$(PY) manage.py demo --tiny

serve: setup
	$(PY) manage.py serve

test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not integration"

# Robust strategies vs a hostile node, and DP's cost, on 4 real nodes and the tiny model (~20 min on 2 cores).
bench-aggregation: setup
	$(PY) bench/aggregation.py

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf var/demo var/serve var/data var/test.sqlite3
