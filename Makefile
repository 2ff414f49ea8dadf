# Two commands do all the set-up: `make run` serves ml-latest-small, `make test` runs the tests.
# Each creates the virtualenv, installs the pinned requirements and fetches the data when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= ml-latest-small
PORT ?= 5432
PYTEST_ARGS ?=

.PHONY: setup data run test test-fast lint blas chromium postgresql system-deps clean

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

run: data blas
	$(PY) server.py --dataset datasets/$(DATASET) --port $(PORT)

lint: setup
	$(PY) -m ruff check .

# Native BLAS (OpenBLAS) roughly halves ALS training; Spark falls back to Java BLAS without it.
# Installed from Debian packages when missing and we may; otherwise a hint, and everything still works.
blas:
	@ldconfig -p 2>/dev/null | grep -q 'libblas\.so\.3' || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  echo "installing OpenBLAS from Debian packages for faster training (apt-get, once)" && \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null; } || \
		echo "note: no native BLAS, training uses Java BLAS (about 2x slower): sudo apt-get install libopenblas0-pthread"

# The browser test drives Debian's Chromium; install it when missing and we may.
chromium:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  echo "installing Chromium from Debian packages for the browser test (apt-get, once)" && \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		{ echo "the browser test needs Chromium: sudo apt-get install chromium"; exit 1; }

# The PostgreSQL store's tests start a real server of their own (as an unprivileged user, on a free port);
# install Debian's server when it is missing and we may.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  echo "installing PostgreSQL from Debian packages for the PostgreSQL store's tests (apt-get, once)" && \
		  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
		{ echo "the PostgreSQL store's tests need a PostgreSQL server: sudo apt-get install postgresql"; exit 1; }

# The Debian packages the project uses when present, installed on purpose rather than on the way:
# OpenBLAS (training about 2x faster), Chromium (the browser test) and PostgreSQL (the store's tests).  Each says what it installs and why.
system-deps: blas chromium postgresql

# Everything, on two pytest workers (each with its own local[2] SparkContext); the slowest tests listed at the end.
test: data lint blas chromium postgresql
	@echo "running the whole suite: real servers, a Spark cluster, a browser and ml-latest-small training (under 4 minutes on 2 cores)"
	$(PY) -m pytest -n 2 --dist loadgroup --durations=15 $(PYTEST_ARGS)

# What needs no real processes, cluster, browser, full-size training or several retrains: under a minute.
test-fast: data lint blas postgresql
	$(PY) -m pytest -m "not slow" -n 2 --durations=10 $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
