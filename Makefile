# Chorus: the commands a developer and an operator need.
CARGO ?= cargo
BIN    = target/debug/chorus

.PHONY: run test lint fmt build bench bench-core cluster-up cluster-down clean-data

## run: a local 3-node cluster (data under ./data) that prints how to connect; Ctrl-C stops it
run: build
	$(BIN) dev --data-dir data

## build: the chorus binary
build:
	$(CARGO) build --bin chorus

## test: unit tests, openraft's storage suite and the process-level cluster tests
test:
	$(CARGO) build --workspace --all-targets
	$(CARGO) nextest run --workspace --no-fail-fast

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: publish load against a fresh local 3-node cluster (release build), batching on and off
bench:
	$(CARGO) build --release --bin chorus
	scripts/bench.sh

## bench-core: criterion micro-benchmarks of the pure core (apply, placement, patterns)
bench-core:
	$(CARGO) bench --bench core

fmt:
	$(CARGO) fmt --all

## cluster-up / cluster-down: the local cluster in the background (pids and logs in ./data)
cluster-up: build
	scripts/cluster-up.sh

cluster-down:
	scripts/cluster-down.sh

clean-data:
	rm -rf data
