# Two commands do all the set-up: `make run` serves ml-latest-small, `make test` runs the tests.
# Each creates the virtualenv, installs the pinned requirements and fetches the data when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= ml-latest-small
PORT ?= 5432
PYTEST_ARGS ?=

.PHONY: setup data run test lint clean

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python 3.11 or newer is needed: run make PYTHON=python3.11 $(MAKECMDGOALS)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

setup: $(VENV)/.installed

data: setup
	$(PY) -m datasets.fetch $(DATASET)

run: data
	$(PY) server.py --dataset datasets/$(DATASET) --port $(PORT)

lint: setup
	$(PY) -m ruff check .

test: data lint
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
