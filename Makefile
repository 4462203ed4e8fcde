# Chorus: the commands a developer and an operator need.
CARGO ?= cargo
BIN    = target/debug/chorus
# cargo-nextest runs every test in a process of its own, in parallel (`.ci/run` installs it);
# without it, cargo's own runner (slower; `cargo install cargo-nextest --locked` to get it).
NEXTEST = $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "$(CARGO) nextest run --no-fail-fast" || echo "$(CARGO) test --no-fail-fast")

.PHONY: run test test-tls lint fmt build bench bench-nats bench-e2e bench-features bench-core bench-log chaos fuzz cluster-up cluster-down clean-data

## run: a local 3-node cluster (data under ./data) that prints how to connect; Ctrl-C stops it
run: build
	$(BIN) dev --data-dir data

## build: the chorus binary
build:
	$(CARGO) build --bin chorus

## test: unit tests, openraft's storage suite, doc examples and the process-level tests, then
## test-tls
test:
	$(CARGO) build --workspace --all-targets
	$(NEXTEST) --workspace
	$(CARGO) test --workspace --doc
	$(MAKE) test-tls

## test-tls: the cluster, client and chaos suites again with mutual TLS between the nodes and
## HTTPS/WSS (and QUIC) for clients with certificates of a cluster CA (`chorus certs init`)
test-tls:
	CHORUS_TEST_CLUSTER_TLS=1 CHORUS_TEST_CLIENT_TLS=1 \
	  $(NEXTEST) --test cluster --test client --test client_wire --test chaos

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## bench: the standard set (SDK publish, e2e with a subscriber on every node, fanout, 20k idle
## connections, leader failover, typing, sessions), each against a fresh local 3-node cluster
## (release build), ROUNDS=3 runs each; writes the table of medians into docs/benchmarks.md
bench:
	$(CARGO) build --release --bin chorus
	WRITE_DOCS=1 scripts/bench.sh

## bench-nats: Chorus publish (8 x 32 in flight, and one at a time) next to NATS JetStream R3 with
## fsync before every ack (../shared/tools/nats-compare), rounds alternating; prints the ratio
bench-nats:
	$(CARGO) build --release --bin chorus
	scripts/vs-nats.sh

## bench-features: only the typing and session scenarios (CHANGES=, SESSION_WINDOW=, SESSIONS=, ROUNDS=)
bench-features:
	$(CARGO) build --release --bin chorus
	SCENARIO=typing scripts/bench.sh
	SCENARIO=session scripts/bench.sh

## bench-e2e: only the publish-to-delivery latency scenario (RATE=, DURATION=, ROUNDS=)
bench-e2e:
	$(CARGO) build --release --bin chorus
	benches/e2e_latency.sh

## bench-core: criterion micro-benchmarks of the pure core (apply, placement, patterns) and of
## a publish-rate check, allowed and refused
bench-core:
	$(CARGO) bench --bench core
	$(CARGO) bench -p chorus-access --bench limits

## bench-log: criterion benchmarks of the Raft log engine (group commits of 1/16/256, a shared log
## against a log per shard, cached and uncached reads, opening a log of 1M entries)
bench-log:
	$(CARGO) bench -p chorus-store --bench log_engine

## chaos: the chaos suite (tests/chaos) against a fresh 3-node cluster: SIGKILL, SIGSTOP, partitions
## and power loss under load, then the checker's classification. CHAOS_SECONDS= (600), SEED= (the time)
chaos:
	$(CARGO) build --bin chorus --test chaos
	CHORUS_CHAOS_SECONDS=$${CHAOS_SECONDS:-600} CHORUS_CHAOS_SEED=$${SEED:-$$(date +%s)} \
	  $(CARGO) test --test chaos chaos_round -- --exact --nocapture

## fuzz: each fuzz target under libFuzzer for FUZZ_SECONDS (60) each: client frames (protobuf
## and JSON), channel patterns, session operations and publish data (needs nightly and cargo-fuzz)
fuzz:
	cd fuzz && for target in frame_decoder channel_patterns session_ops; do \
	  $(CARGO) +nightly fuzz run $$target -- -max_total_time=$${FUZZ_SECONDS:-60} || exit 1; done

fmt:
	$(CARGO) fmt --all

## cluster-up / cluster-down: the local cluster in the background (pids and logs in ./data)
cluster-up: build
	scripts/cluster-up.sh

cluster-down:
	scripts/cluster-down.sh

clean-data:
	rm -rf data
