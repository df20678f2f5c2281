# copy-snapshots — every target installs what it needs; nothing but cargo and python3 is assumed.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(HOME)/.cache/copy-snapshots/target

.PHONY: test lint simulate

## test: unit, engine and request tests
test:
	cargo test

## lint: formatting and clippy, warnings as errors
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## simulate: the engine benchmark on simulated time
simulate:
	cargo run --release --example simulate
