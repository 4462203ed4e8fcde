#!/usr/bin/env bash
# Cluster benchmarks on a fresh local 3-node cluster (release build, data on local disk).
# Each scenario runs ROUNDS times; every run prints its JSON line, then the medians.
#   scripts/bench.sh                 # SCENARIO=publish: HTTP publish load, batching on and off
#   SCENARIO=e2e scripts/bench.sh    # publish-to-delivery latency via the SDK, node 2 -> node 1
#   ROUNDS=5 DURATION=20s CONCURRENCY=256 PAYLOAD=128 scripts/bench.sh
#   SCENARIO=e2e RATE=1000 DURATION=10s scripts/bench.sh
#   SCENARIO=typing CHANGES=1000 scripts/bench.sh     # typing notice latency, typist on node 2
#   SCENARIO=session WINDOW=16 SESSIONS=1 scripts/bench.sh   # session ops, a client per node
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-publish}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}; CONCURRENCY=${CONCURRENCY:-256}; PAYLOAD=${PAYLOAD:-128}
RATE=${RATE:-500}; CHANGES=${CHANGES:-1000}; WINDOW=${WINDOW:-16}; SESSIONS=${SESSIONS:-1}
BIN=${CHORUS_BIN:-target/release/chorus}
[ -x "$BIN" ] || cargo build --release --bin chorus
export CHORUS_CLUSTER_SECRET=bench-cluster-secret CHORUS_JWT_SECRET=bench-jwt-secret-0123456789
WORK=$(mktemp -d /tmp/chorus-bench.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

start_cluster() {  # dir, max_batch_commands
  local dir=$1 batch=$2
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
}

stop_cluster() {
  for p in "${PIDS[@]}"; do kill -TERM "$p"; done
  wait "${PIDS[@]}" 2>/dev/null || true
  PIDS=()
}

label() { sed "s|^{|{\"config\":\"$1\",|" | tee -a "$WORK/results.jsonl"; }

run_publish() {  # name, max_batch_commands
  start_cluster "$WORK/$1" "$2"
  for _ in $(seq 1 "$ROUNDS"); do
    "$BIN" bench publish --node http://127.0.0.1:7601 --node http://127.0.0.1:7602 --node http://127.0.0.1:7603 \
      --concurrency "$CONCURRENCY" --payload "$PAYLOAD" --duration "$DURATION" | tail -n 1 | label "$1"
  done
  stop_cluster
}

run_e2e() {
  local dir="$WORK/e2e"
  start_cluster "$dir" 512
  for _ in $(seq 1 "$ROUNDS"); do
    "$BIN" bench e2e --subscribe-node 127.0.0.1:7801 --publish-node 127.0.0.1:7802 \
      --ca "$dir/node1/tls/cert.pem" --ca "$dir/node2/tls/cert.pem" \
      --rate "$RATE" --payload "$PAYLOAD" --duration "$DURATION" | tail -n 1 | label "e2e-${RATE}/s"
  done
  stop_cluster
}

CAS=(--ca "$WORK/cluster/node1/tls/cert.pem" --ca "$WORK/cluster/node2/tls/cert.pem" --ca "$WORK/cluster/node3/tls/cert.pem")

run_typing() {
  start_cluster "$WORK/cluster" 512
  for _ in $(seq 1 "$ROUNDS"); do
    "$BIN" bench typing --typist-node 127.0.0.1:7802 --subscriber-node 127.0.0.1:7801 \
      --subscriber-node 127.0.0.1:7802 --subscriber-node 127.0.0.1:7803 "${CAS[@]}" \
      --changes "$CHANGES" | tail -n 1 | label "typing"
  done
  stop_cluster
}

run_session() {
  start_cluster "$WORK/cluster" 512
  for _ in $(seq 1 "$ROUNDS"); do
    "$BIN" bench session --node 127.0.0.1:7801 --node 127.0.0.1:7802 --node 127.0.0.1:7803 "${CAS[@]}" \
      --window "$WINDOW" --sessions "$SESSIONS" --duration "$DURATION" | tail -n 1 | label "session-s${SESSIONS}-w${WINDOW}"
  done
  stop_cluster
}

case "$SCENARIO" in
  publish) run_publish batched 512; run_publish unbatched 1 ;;
  e2e) run_e2e ;;
  typing) run_typing ;;
  session) run_session ;;
  *) echo "unknown SCENARIO=$SCENARIO (publish, e2e, typing or session)" >&2; exit 2 ;;
esac
python3 - "$WORK/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for config in dict.fromkeys(r["config"] for r in rows):
    rs = [r for r in rows if r["config"] == config]
    med = lambda k: statistics.median(r[k] for r in rs)
    if rs[0]["scenario"] == "typing":
        print(f"{config:10} median of {len(rs)}: send-to-notice p50 {med('p50_ms'):6.2f} ms  p99 {med('p99_ms'):6.2f} ms  p999 {med('p999_ms'):6.2f} ms  missing {sum(r['missing'] for r in rs)}")
    elif rs[0]["scenario"] == "session":
        print(f"{config:10} median of {len(rs)}: {med('ops_per_sec'):8.0f} ops/s  p50 {med('p50_ms'):6.2f} ms  p99 {med('p99_ms'):7.2f} ms  p999 {med('p999_ms'):7.2f} ms  errors {sum(r['errors'] for r in rs)}")
    elif rs[0]["scenario"] == "e2e":
        print(f"{config:10} median of {len(rs)}: publish-to-delivery p50 {med('p50_ms'):6.2f} ms  p90 {med('p90_ms'):6.2f} ms  p99 {med('p99_ms'):7.2f} ms  delivered {sum(r['delivered'] for r in rs)}/{sum(r['sent'] for r in rs)}  errors {sum(r['errors'] for r in rs)}")
    else:
        print(f"{config:10} median of {len(rs)}: {med('msgs_per_sec'):8.0f} msgs/s  p50 {med('p50_ms'):6.2f} ms  p99 {med('p99_ms'):7.2f} ms  p999 {med('p999_ms'):7.2f} ms  errors {sum(r['errors'] for r in rs)}")
PY
