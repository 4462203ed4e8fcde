#!/usr/bin/env bash
# Chorus next to NATS JetStream R3 with fsync before every ack, on this machine, in one run
# (`make bench-nats`). Rounds alternate between the two so that both see the same noise:
#   loaded:       Chorus `bench publish` 8 x 32 in flight, 100 channels  vs  NATS 256 in flight
#   one at a time: Chorus `bench publish` 1 x 1, 1 channel                vs  NATS sync publishes
# Prints each round, then the medians and the ratio Chorus / NATS. ROUNDS=3, DURATION=10s.
# NATS comes from ../shared/tools/nats-compare (NATS_COMPARE= to point elsewhere).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}
NATS_COMPARE=${NATS_COMPARE:-../shared/tools/nats-compare/run.sh}
[ -x "$NATS_COMPARE" ] || { echo "no $NATS_COMPARE: set NATS_COMPARE to nats-compare's run.sh" >&2; exit 2; }
[ -x "${CHORUS_BIN:-target/release/chorus}" ] || cargo build --release --bin chorus

# "rate p50 p99" of one Chorus round.
chorus_round() {  # publishers window channels
  SCENARIO=publish ROUNDS=1 DURATION=$DURATION PUBLISHERS=$1 WINDOW=$2 CHANNELS=$3 scripts/bench.sh 2>&1 |
    sed -n 's/^publish: .* = \([0-9]*\) msgs\/s .* ack p50 \([0-9.]*\) ms, p99 \([0-9.]*\) ms.*/\1 \2 \3/p'
}
# "rate p50 p99" of one NATS round.
nats_round() {  # mode count
  "$NATS_COMPARE" always "$1" "$2" 128 256 2>&1 |
    sed -n 's/.*rate=\([0-9.]*\).*p50=\([0-9.]*\)ms.*p99=\([0-9.]*\)ms.*/\1 \2 \3/p'
}
median() { sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }

compare() {  # label, chorus args (3), nats args (2)
  local label=$1 c n
  local -a cr=() cp50=() cp99=() nr=() np50=() np99=()
  for round in $(seq 1 "$ROUNDS"); do
    c=$(chorus_round "$2" "$3" "$4"); n=$(nats_round "$5" "$6")
    [ -n "$c" ] && [ -n "$n" ] || { echo "$label round $round failed (chorus: '$c', nats: '$n')" >&2; exit 1; }
    read -r r p50 p99 <<<"$c"; cr+=("$r"); cp50+=("$p50"); cp99+=("$p99")
    echo "$label round $round: chorus $r msgs/s p50 $p50 ms p99 $p99 ms"
    read -r r p50 p99 <<<"$n"; nr+=("$r"); np50+=("$p50"); np99+=("$p99")
    echo "$label round $round: nats   $r msgs/s p50 $p50 ms p99 $p99 ms"
  done
  local mc mn
  mc="$(printf '%s\n' "${cr[@]}" | median) $(printf '%s\n' "${cp50[@]}" | median) $(printf '%s\n' "${cp99[@]}" | median)"
  mn="$(printf '%s\n' "${nr[@]}" | median) $(printf '%s\n' "${np50[@]}" | median) $(printf '%s\n' "${np99[@]}" | median)"
  echo "$mc $mn" | awk -v l="$label" -v r="$ROUNDS" '{
    printf "%s, medians of %d: chorus %d msgs/s, p50 %.2f ms, p99 %.2f ms | nats (fsync always) %d msgs/s, p50 %.2f ms, p99 %.2f ms | chorus/nats throughput %.2fx\n",
      l, r, $1, $2, $3, $4, $5, $6, $1 / $4 }'
}

compare "loaded" 8 32 100 async 60000
compare "one at a time" 1 1 1 sync 5000
