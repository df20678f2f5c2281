# copy-snapshots — every target installs what it needs into .venv/; nothing but cargo and
# python3 is assumed.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TARGET_DIR ?= $(HOME)/.cache/copy-snapshots/target

VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: help venv test lint simulate clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(STAMP) ## install the Python tools (moto) into .venv/

test: $(STAMP) ## all tests: engine, requests, and the real SDK and binary against moto
	scripts/with-moto cargo test

lint: ## formatting and clippy, warnings as errors
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

simulate: ## the engine benchmark on simulated time
	cargo run --release --example simulate

clean: ## remove build output and .venv/
	cargo clean
	rm -rf $(VENV)
