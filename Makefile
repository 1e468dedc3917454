# Two commands for a new user: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, or the one pip installs as a module on a fresh machine.
UV ?= $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
RUN := $(UV) run --frozen
DBT_DIR := dbt_project
STAMP := .venv/.medallion-installed

.PHONY: help install demo dev test test-fast bench lint format clean browser wrk

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@touch $(STAMP)

$(DBT_DIR)/target/manifest.json: $(STAMP) $(shell find $(DBT_DIR) -name '*.sql' -o -name '*.yml' | grep -v target/)
	cd $(DBT_DIR) && $(RUN) dbt parse --quiet --profiles-dir . --project-dir .

install: $(STAMP) $(DBT_DIR)/target/manifest.json  ## create the environment and parse the dbt project

demo: install  ## run the whole platform end to end on embedded defaults and print a summary
	$(RUN) medallion demo

# Ports of `make dev`, e.g. `make dev PORT=3001 WEBHOOKS_PORT=8001 SFTP_PORT=2223`. Set here, so a PORT exported
# by the shell is not taken by accident; SFTP_PORT left empty means MEDALLION_SFTP_PORT, else 2222.
PORT := 3000
WEBHOOKS_PORT := 8000
SFTP_PORT :=

dev: install  ## the Dagster UI (:3000, PORT=) with sensors and automation, webhooks (:8000, WEBHOOKS_PORT=), SFTP (:2222, SFTP_PORT=)
	$(RUN) medallion dev --port $(PORT) --webhooks-port $(WEBHOOKS_PORT) $(if $(SFTP_PORT),--sftp-port $(SFTP_PORT))

# A Debian package, installed as root where it is missing: $(call debian-package,<command>,<package>,<who needs it>)
define debian-package
	@command -v $(1) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else echo "$(3) needs $(1): install the '$(2)' package" >&2; exit 1; fi; }
endef

browser:  ## headless Chromium for the UI test (Debian package)
	$(call debian-package,chromium,chromium,The UI test)

wrk:  ## the HTTP load client of the receiver benchmark (Debian package)
	$(call debian-package,wrk,wrk,The webhook receiver benchmark)

# Three pytest workers on two cores: many tests spend much of their time waiting on the processes they start
# (daemons, runs, dbt, servers), which a third worker fills.
WORKERS := 3

test: install browser  ## every test, including the SFTP, PostgreSQL, dbt, end-to-end and UI ones, on three workers
	$(RUN) pytest -n $(WORKERS) --dist loadgroup

test-fast: install  ## lib/ and the Dagster adapters, without dbt builds, PostgreSQL, S3, the demo or the UI (1 to 2.5 min)
	$(RUN) pytest -n $(WORKERS) tests/lib tests/samples tests/defs tests/services tests/test_definitions.py tests/dbt/test_sources.py \
	  -m "not slow and not postgres and not ui and not s3"

bench: install wrk  ## load time, bronze hop vs COPY, gates vs SQL, webhook receiver, lakehouse pruning and fan-out, drop to gold
	$(RUN) python -m benchmarks

lint: install  ## ruff
	$(RUN) ruff check .
	$(RUN) ruff format --check .

format: install
	$(RUN) ruff format .

clean:  ## remove local data (lake, Dagster instance, SFTP server, inbox) and build output
	rm -rf .data .bench $(DBT_DIR)/target $(DBT_DIR)/logs
