# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint lock bench clean system-packages

# Exact versions with hashes, from pyproject.toml: `make lock` refreshes them (keeping every
# pin it can; `make lock ARGS=--upgrade` moves them all to the newest allowed).
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
LOCK_FLAGS := --universal --python-version 3.11 --generate-hashes --custom-compile-command "make lock" --quiet
# drip itself, its dependencies already there from the lock; `pip check` then fails if
# pyproject.toml asks for something the lock lacks (run `make lock`).
INSTALL_DRIP = $(BIN)/python -m pip install --quiet --no-deps -e . && \
	{ $(BIN)/python -m pip check >/dev/null || { $(BIN)/python -m pip check; \
	  echo "pyproject.toml and the lock files disagree: run make lock"; exit 1; }; }

LINTED := drip tests bench scheduler.py

# What the tests talk to, from Debian's packages: `command=package` (a command or a path).
TEST_PACKAGES := chromium=chromium pdftoppm=poppler-utils /usr/lib/dovecot/imap=dovecot-imapd /usr/lib/dovecot/pop3=dovecot-pop3d /usr/sbin/nginx=nginx-light /usr/bin/caddy=caddy

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(INSTALL_DRIP)
	touch $@

$(TEST_STAMP): $(TEST_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r $(TEST_LOCK)
	$(INSTALL_DRIP)
	touch $@ $(STAMP)

lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml $(LOCK_FLAGS) $(ARGS) -o $(LOCK)
	$(BIN)/uv pip compile pyproject.toml --extra test $(LOCK_FLAGS) $(ARGS) -o $(TEST_LOCK)
	@# pytest-cov asks for coverage[toml]; pip's hash mode takes an extra as a second,
	@# unpinned requirement unless the pin itself names it (no extra packages on 3.11).
	sed -i 's/^coverage==/coverage[toml]==/' $(TEST_LOCK)

run: $(STAMP)
	$(BIN)/drip dev $(ARGS)

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
	@# Postfix as a second, real receiving MTA (bench/postfix.py runs a private instance).
	@command -v postfix >/dev/null || { S=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  echo "postfix postfix/main_mailer_type select No configuration" | $$S debconf-set-selections; \
	  $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix; \
	} >/dev/null 2>&1 || echo "postfix could not be installed: bench send compares against aiosmtpd only"
	$(BIN)/python -m bench $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
