# copy-snapshots — every target installs what it needs into .venv/; nothing but cargo and
# python3 is assumed.
SHELL := /bin/bash
.DEFAULT_GOAL := help
export CARGO_TARGET_DIR ?= $(HOME)/.cache/copy-snapshots/target
# cargo-lambda, zig, sam and cfn-lint come from the project's venv.
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0

VENV := .venv
STAMP := $(VENV)/.installed
EVENT ?= events/manual.json
ARM64_TARGET := aarch64-unknown-linux-gnu

.PHONY: help venv build install test lint check-templates watch invoke demo deploy simulate verify-aws clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(STAMP): requirements-dev.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(STAMP) ## install the Python tools (moto, cargo-lambda, zig, cfn-lint, sam) into .venv/

install: ## put the copy-snapshots command on your PATH (cargo install)
	cargo install --locked --path .

build: $(STAMP) ## release build for Lambda (arm64, provided.al2023)
	rustup target add $(ARM64_TARGET)
	cargo lambda build --release --arm64

test: $(STAMP) check-templates ## every test: engine, requests, SDK and binary against moto, templates
	scripts/check-layers
	scripts/check-shared-features
	scripts/with-moto cargo test -- --show-output

check-templates: $(STAMP) ## cfn-lint and sam validate the templates, check their roles, cfn-lint the state machine
	cfn-lint template.yaml
	# Every optional part on: alarms, both triggers, reserved concurrency, three target regions,
	# narrowed keys.
	cfn-lint template.yaml --parameters TargetRegion=eu-west-1 \
	  AlarmTopicArn=arn:aws:sns:us-east-1:111122223333:ops ScheduleExpression='rate(1 day)' \
	  CopyNewSnapshots=true ReservedConcurrency=5 TargetRegion2=us-west-2 TargetRegion3=ap-southeast-2 \
	  KmsKeyArns=arn:aws:kms:eu-west-1:111122223333:key/1111aaaa-2222-3333-4444-555566667777
	# Targets in other accounts (one region in two accounts), and the recovery account's template.
	cfn-lint template.yaml --parameters TargetRegion=eu-west-1 \
	  TargetRoleArn=arn:aws:iam::444455556666:role/copy-snapshots-recovery TargetRegion2=eu-west-1
	cfn-lint recovery-account.yaml
	sam validate --lint --template template.yaml --region us-east-1
	python scripts/check-iam.py
	python scripts/lint-asl.py

lint: check-templates ## formatting, clippy (warnings as errors), the layers, template checks
	scripts/check-layers
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

watch: $(STAMP) ## run the function locally (cargo lambda watch, loopback only)
	cargo lambda watch -A 127.0.0.1

invoke: $(STAMP) ## invoke the watched function: make invoke EVENT=events/…
	cargo lambda invoke -A 127.0.0.1 --data-file $(EVENT) copy-snapshots

demo: $(STAMP) ## the function copying snapshots between regions and accounts of a local EC2 emulator
	EC2_EMULATOR=fault scripts/with-moto scripts/demo

deploy: $(STAMP) ## sam build + sam deploy --guided
	rustup target add $(ARM64_TARGET)
	sam build --beta-features
	sam deploy --guided

simulate: $(STAMP) ## the engine benchmark on simulated time, and the command line's start-up
	cargo run --release --example simulate
	cargo build --release --bin copy-snapshots
	python scripts/cli-startup $(CARGO_TARGET_DIR)/release/copy-snapshots

verify-aws: ## live check on YOUR account: make verify-aws SOURCE=us-east-1 TARGET=eu-west-1 KMS_KEY=alias/dr [PROFILE=…]
	@if [ -z "$(SOURCE)" ] || [ -z "$(TARGET)" ] || [ -z "$(KMS_KEY)" ]; then \
	  echo "usage: make verify-aws SOURCE=<region> TARGET=<region> KMS_KEY=<key id, key ARN, alias or alias ARN> [PROFILE=<profile>]" >&2; \
	  echo "makes a 1 GiB volume, a snapshot and an encrypted copy in your account for a few minutes, then deletes them" >&2; \
	  exit 2; \
	fi
	cargo run --locked --quiet --bin copy-snapshots -- verify-aws --source-region '$(SOURCE)' \
	  --target-region '$(TARGET)' --kms-key '$(KMS_KEY)' $(if $(PROFILE),--profile '$(PROFILE)')

clean: ## remove build output, .aws-sam/ and .venv/
	cargo clean
	rm -rf .aws-sam $(VENV)
