#!/usr/bin/env bash
# How long a node whose Raft log holds ENTRIES entries (1,000,000 by default) takes to restart:
# a 3-node release cluster with snapshots off and batching off (one entry per publish) is loaded
# with `chorus bench publish` until node 1's log holds ENTRIES entries over all shards; node 1 is
# then SIGKILLed and started again, and the script prints the time from its start to /ready
# (every shard's log read and its state rebuilt by replaying the log). RESTARTS=3 restarts; the
# median is printed last. Not part of `make test` (loading takes minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
ENTRIES=${ENTRIES:-1000000}; RESTARTS=${RESTARTS:-3}
BIN=${CHORUS_BIN:-target/release/chorus}
[ -x "$BIN" ] || cargo build --release --bin chorus
export CHORUS_CLUSTER_SECRET=bench-cluster-secret CHORUS_JWT_SECRET=bench-jwt-secret-0123456789
# The load generator publishes as one user: no per-user publish limit.
export CHORUS_PUBLISH_PER_MINUTE=0 CHORUS_CONNECTS_PER_MINUTE_PER_IP=0 CHORUS_DEVICE_REQUESTS_PER_MINUTE=0 \
  CHORUS_SUBSCRIBE_PER_MINUTE=0 CHORUS_TYPING_PER_MINUTE=0 CHORUS_COLLAB_OPS_PER_MINUTE=0 CHORUS_CONNECTS_PER_MINUTE=0 CHORUS_HTTP_REQUESTS_PER_MINUTE_PER_IP=0
D=$(mktemp -d /tmp/chorus-restart.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
printf '[raft_timing]\nmax_batch_commands = 1\nsnapshot_every_entries = 100000000\n[history]\nmax_entries = 100000000\n' >"$D/extra.toml"
start_node() {
  "$BIN" node --config "$D/extra.toml" --id "$1" --data-dir "$D/node$1" --http 127.0.0.1:$((7600 + $1)) \
    --raft 127.0.0.1:$((7700 + $1)) --quic 127.0.0.1:$((7800 + $1)) \
    --peers 1=127.0.0.1:7701,2=127.0.0.1:7702,3=127.0.0.1:7703 >>"$D/node$1.log" 2>&1 &
  PIDS[$1]=$!
}
wait_ready() {
  for _ in $(seq 1 3000); do curl -fs "http://127.0.0.1:$((7600 + $1))/ready" >/dev/null 2>&1 && return 0; sleep 0.01; done
  echo "node $1 not ready within 30 s; its log:" >&2; tail -n 20 "$D/node$1.log" >&2; exit 1
}
# Entries in node 1's log over all shards, from its metrics (last log index per shard).
log_entries() {
  curl -fs http://127.0.0.1:7601/metrics | awk '/^chorus_shard_last_log_index\{/ {s += $2} END {print s + 0}'
}
for n in 1 2 3; do start_node $n; done
for n in 1 2 3; do wait_ready $n; done
sleep 3
CAS=(--ca "$D/node1/tls/cert.pem" --ca "$D/node2/tls/cert.pem" --ca "$D/node3/tls/cert.pem")
while [ "$(log_entries)" -lt "$ENTRIES" ]; do
  "$BIN" bench publish --node 127.0.0.1:7801 --node 127.0.0.1:7802 --node 127.0.0.1:7803 "${CAS[@]}" \
    --publishers 8 --window 32 --channels 100 --payload 128 --duration 30s 2>&1 | grep '^publish:' || true
  echo "node 1's log: $(log_entries) entries"
done
times=()
for round in $(seq 1 "$RESTARTS"); do
  kill -KILL "${PIDS[1]}"; wait "${PIDS[1]}" 2>/dev/null || true
  start=$(date +%s%N); start_node 1; wait_ready 1; end=$(date +%s%N)
  ms=$(((end - start) / 1000000)); times+=("$ms")
  echo "restart $round: node 1 ready $ms ms after its start, $(log_entries) entries in its log"
done
median=$(printf '%s\n' "${times[@]}" | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}')
echo "restart with $(log_entries) log entries: median $median ms to /ready over $RESTARTS restarts"
