#!/usr/bin/env bash
# CPU of an idle 3-node cluster: starts three release nodes on loopback, lets them settle for
# SETTLE seconds (10), then reads their utime+stime from /proc over SECONDS_MEASURED (20) and
# prints the total as a percentage of one core. Not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CHORUS_BIN:-target/release/chorus}
SETTLE=${SETTLE:-10}; MEASURED=${SECONDS_MEASURED:-20}
[ -x "$BIN" ] || cargo build --release --bin chorus
export CHORUS_CLUSTER_SECRET=bench-cluster-secret CHORUS_JWT_SECRET=bench-jwt-secret-0123456789
D=$(mktemp -d /tmp/chorus-idle.XXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT
for n in 1 2 3; do
  "$BIN" node --id "$n" --data-dir "$D/node$n" --http 127.0.0.1:$((7600 + n)) --raft 127.0.0.1:$((7700 + n)) \
    --quic 127.0.0.1:$((7800 + n)) --peers 1=127.0.0.1:7701,2=127.0.0.1:7702,3=127.0.0.1:7703 >"$D/node$n.log" 2>&1 &
  PIDS+=($!)
done
for n in 1 2 3; do
  ready=0
  for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$((7600 + n))/ready" >/dev/null 2>&1 && { ready=1; break; }; sleep 0.1; done
  [ "$ready" = 1 ] || { echo "node $n not ready within 30 s; its log:" >&2; tail -n 20 "$D/node$n.log" >&2; exit 1; }
done
sleep "$SETTLE"
ticks() { local t=0; for p in "${PIDS[@]}"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }
hz=$(getconf CLK_TCK)
before=$(ticks); sleep "$MEASURED"; after=$(ticks)
awk -v d=$((after - before)) -v hz="$hz" -v s="$MEASURED" \
  'BEGIN { printf "idle 3-node cluster: %.2f %% of one core over %d s\n", 100 * d / hz / s, s }'
