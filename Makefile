# Two commands do all the set-up: `make run` serves ml-latest-small, `make test` runs the tests.
# Each creates the virtualenv, installs the pinned requirements and fetches the data when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= ml-latest-small
PORT ?= 5432
PYTEST_ARGS ?=

.PHONY: setup data run test lint chromium clean

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

# The browser test drives Debian's Chromium; install it when missing and we may.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "the browser test needs Chromium: sudo apt-get install chromium"; exit 1; }

test: data lint chromium
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
