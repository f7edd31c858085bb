# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint bench clean system-packages

LINTED := drip tests bench scheduler.py

# What the tests talk to, from Debian's packages: `command=package` (a command or a path).
TEST_PACKAGES := chromium=chromium pdftoppm=poppler-utils /usr/lib/dovecot/imap=dovecot-imapd /usr/lib/dovecot/pop3=dovecot-pop3d

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP)

run: $(STAMP)
	$(BIN)/drip dev

system-packages:
	@scripts/system-packages.sh $(TEST_PACKAGES)
	@scripts/postgres.sh

test: lint system-packages
	$(BIN)/python -m pytest -n 2 -m "not exclusive" --cov=drip --cov-report=term:skip-covered
	$(BIN)/python -m pytest -m exclusive

# The checks that need no database: also what .pre-commit-config.yaml runs.
lint: $(TEST_STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# Benchmarks, never part of the tests: `make bench` (a few minutes), `make bench ARGS=--quick`.
bench: $(TEST_STAMP)
	@command -v wrk >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$S apt-get install -y -qq wrk || { $$S apt-get update -qq && $$S apt-get install -y -qq wrk; }; \
	} >/dev/null 2>&1 || echo "wrk could not be installed: bench signup falls back to httpx"
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
