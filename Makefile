# Chorus: the commands a developer and an operator need.
CARGO ?= cargo
BIN    = target/debug/chorus

.PHONY: run test lint fmt build bench bench-e2e bench-features bench-core fuzz cluster-up cluster-down clean-data

## run: a local 3-node cluster (data under ./data) that prints how to connect; Ctrl-C stops it
run: build
	$(BIN) dev --data-dir data

## build: the chorus binary
build:
	$(CARGO) build --bin chorus

## test: unit tests, openraft's storage suite, doc examples and the process-level tests
test:
	$(CARGO) build --workspace --all-targets
	$(CARGO) nextest run --workspace --no-fail-fast
	$(CARGO) test --workspace --doc

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: publish load (batching on and off), publish-to-delivery latency through the SDK,
## typing notice latency and session operations, each against a fresh local 3-node cluster
## (release build)
bench:
	$(CARGO) build --release --bin chorus
	scripts/bench.sh
	benches/e2e_latency.sh
	SCENARIO=typing scripts/bench.sh
	SCENARIO=session scripts/bench.sh

## bench-features: only the typing and session scenarios (CHANGES=, WINDOW=, SESSIONS=, ROUNDS=)
bench-features:
	$(CARGO) build --release --bin chorus
	SCENARIO=typing scripts/bench.sh
	SCENARIO=session scripts/bench.sh

## bench-e2e: only the publish-to-delivery latency scenario (RATE=, DURATION=, ROUNDS=)
bench-e2e:
	$(CARGO) build --release --bin chorus
	benches/e2e_latency.sh

## bench-core: criterion micro-benchmarks of the pure core (apply, placement, patterns)
bench-core:
	$(CARGO) bench --bench core

## fuzz: the client frame decoder under libFuzzer (needs nightly and cargo-fuzz; FUZZ_SECONDS=)
fuzz:
	cd fuzz && $(CARGO) +nightly fuzz run frame_decoder -- -max_total_time=$${FUZZ_SECONDS:-60}

fmt:
	$(CARGO) fmt --all

## cluster-up / cluster-down: the local cluster in the background (pids and logs in ./data)
cluster-up: build
	scripts/cluster-up.sh

cluster-down:
	scripts/cluster-down.sh

clean-data:
	rm -rf data
