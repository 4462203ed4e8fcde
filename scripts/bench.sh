#!/usr/bin/env bash
# Publish benchmark on a fresh local 3-node cluster (release build, data on local disk):
# runs `chorus bench publish` ROUNDS times per configuration and prints each run's JSON line
# and the median msgs/s and latencies per configuration.
#   scripts/bench.sh                # batching on and off, 3 rounds of 10 s each
#   ROUNDS=5 DURATION=20s CONCURRENCY=256 PAYLOAD=128 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}; CONCURRENCY=${CONCURRENCY:-256}; PAYLOAD=${PAYLOAD:-128}
BIN=${CHORUS_BIN:-target/release/chorus}
[ -x "$BIN" ] || cargo build --release --bin chorus
export CHORUS_CLUSTER_SECRET=bench-cluster-secret CHORUS_JWT_SECRET=bench-jwt-secret-0123456789
WORK=$(mktemp -d /tmp/chorus-bench.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

run_config() {  # name, max_batch_commands
  local name=$1 batch=$2 dir="$WORK/$1"
  mkdir -p "$dir"
  printf '[raft_timing]\nmax_batch_commands = %s\n' "$batch" >"$dir/extra.toml"
  PIDS=()
  for n in 1 2 3; do
    "$BIN" node --config "$dir/extra.toml" --id $n --data-dir "$dir/node$n" \
      --http 127.0.0.1:$((7600 + n)) --raft 127.0.0.1:$((7700 + n)) --quic 127.0.0.1:$((7800 + n)) \
      --peers 1=127.0.0.1:7701,2=127.0.0.1:7702,3=127.0.0.1:7703 >"$dir/node$n.log" 2>&1 &
    PIDS+=($!)
  done
  for n in 1 2 3; do
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$((7600 + n))/ready" >/dev/null 2>&1 && break; sleep 0.1; done
  done
  sleep 3 # leader placement settles (it starts 2 s after boot)
  for r in $(seq 1 "$ROUNDS"); do
    "$BIN" bench publish --node http://127.0.0.1:7601 --node http://127.0.0.1:7602 --node http://127.0.0.1:7603 \
      --concurrency "$CONCURRENCY" --payload "$PAYLOAD" --duration "$DURATION" | tail -n 1 | sed "s/^{/{\"config\":\"$name\",/" | tee -a "$WORK/results.jsonl"
  done
  for p in "${PIDS[@]}"; do kill -TERM "$p"; done
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
}

run_config batched 512
run_config unbatched 1
python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for config in dict.fromkeys(r["config"] for r in rows):
    rs = [r for r in rows if r["config"] == config]
    med = lambda k: statistics.median(r[k] for r in rs)
    print(f"{config:10} median of {len(rs)}: {med('msgs_per_sec'):8.0f} msgs/s  p50 {med('p50_ms'):6.2f} ms  p99 {med('p99_ms'):7.2f} ms  p999 {med('p999_ms'):7.2f} ms  errors {sum(r['errors'] for r in rs)}")
PY
