#!/usr/bin/env bash
# Publish-to-delivery latency through the Rust SDK across nodes, at a fixed rate: a publisher
# on node 2, a subscriber on every node, all over QUIC (`chorus bench e2e`, crates/chorus-bench/src/e2e.rs).
#   benches/e2e_latency.sh                          # 5,000 msgs/s, 10 s, 3 rounds
#   RATE=2000 DURATION=20s ROUNDS=5 benches/e2e_latency.sh
exec env SCENARIO=e2e "$(dirname "$0")/../scripts/bench.sh"
