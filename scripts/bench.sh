#!/usr/bin/env bash
# Cluster benchmarks on a fresh local 3-node cluster (release build, data on local disk).
# Each scenario runs ROUNDS times; every run prints its JSON line, then the medians.
#   scripts/bench.sh                          # SCENARIO=standard: the set `make bench` runs
#   SCENARIO=publish scripts/bench.sh         # SDK publishers: PUBLISHERS=8 WINDOW=32 CHANNELS=100 PAYLOAD=128
#   SCENARIO=publish-http scripts/bench.sh    # HTTP publish load, batching on and off (CONCURRENCY=256)
#   SCENARIO=e2e RATE=5000 scripts/bench.sh   # publish-to-delivery latency, a subscriber on every node
#   SCENARIO=fanout SUBSCRIBERS=300 FANOUT_RATE=100 scripts/bench.sh
#   SCENARIO=connections CONNECTIONS=20000 HOLD_SECS=5 scripts/bench.sh   # idle QUIC connections on node 1
#     and WS_CONNECTIONS idle WebSocket ones (default: as many as `ulimit -n` lets both sides hold)
#   SCENARIO=failover KILLS=5 scripts/bench.sh                # SIGKILL the written shard's leader
#   SCENARIO=typing CHANGES=1000 scripts/bench.sh             # typing notice latency
#   SCENARIO=session SESSION_WINDOW=16 SESSIONS=1 scripts/bench.sh
# SHARDS= sets the shard count of the cluster (default 12). KEEP_WORK=1 keeps the data and logs.
# WRITE_DOCS=1 (make bench) replaces the generated table in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${SCENARIO:-standard}
ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-10s}; PAYLOAD=${PAYLOAD:-128}
PUBLISHERS=${PUBLISHERS:-8}; WINDOW=${WINDOW:-32}; CHANNELS=${CHANNELS:-100}; CONCURRENCY=${CONCURRENCY:-256}
RATE=${RATE:-5000}; SUBSCRIBERS=${SUBSCRIBERS:-300}; FANOUT_RATE=${FANOUT_RATE:-100}
CONNECTIONS=${CONNECTIONS:-20000}; HOLD_SECS=${HOLD_SECS:-5}; KILLS=${KILLS:-5}; SHARDS=${SHARDS:-12}
CHANGES=${CHANGES:-1000}; SESSION_WINDOW=${SESSION_WINDOW:-16}; SESSIONS=${SESSIONS:-1}
# A WebSocket connection is a file descriptor in the load generator and one in node 1.
FDS=$(ulimit -n); [ "$FDS" = unlimited ] && FDS=$((CONNECTIONS + 1000))
WS_CONNECTIONS=${WS_CONNECTIONS:-$(( FDS < CONNECTIONS + 1000 ? (FDS > 1000 ? FDS - 1000 : 0) : CONNECTIONS ))}
BIN=${CHORUS_BIN:-target/release/chorus}
[ -x "$BIN" ] || cargo build --release --bin chorus
export CHORUS_CLUSTER_SECRET=bench-cluster-secret CHORUS_JWT_SECRET=bench-jwt-secret-0123456789
# The load generator publishes as one user and device, from one address: no per-user publish,
# per-device request or per-address connect limit (the connections scenario opens 20,000).
export CHORUS_PUBLISH_PER_MINUTE=0 CHORUS_CONNECTS_PER_MINUTE_PER_IP=0 CHORUS_DEVICE_REQUESTS_PER_MINUTE=0 \
  CHORUS_SUBSCRIBE_PER_MINUTE=0 CHORUS_TYPING_PER_MINUTE=0 CHORUS_COLLAB_OPS_PER_MINUTE=0 CHORUS_CONNECTS_PER_MINUTE=0 CHORUS_HTTP_REQUESTS_PER_MINUTE_PER_IP=0
WORK=$(mktemp -d /tmp/chorus-bench.XXXX)
SUPERVISORS=()
CLUSTER_DIR=
QUIC=(--node 127.0.0.1:7801 --node 127.0.0.1:7802 --node 127.0.0.1:7803)
HTTP=(--http http://127.0.0.1:7601 --http http://127.0.0.1:7602 --http http://127.0.0.1:7603)

node_pids() { cat "$CLUSTER_DIR"/node[123].pid 2>/dev/null || true; }

stop_cluster() {  # SIGTERM, then SIGKILL whatever still runs after 15 s
  [ -n "$CLUSTER_DIR" ] || return 0
  rm -f "$CLUSTER_DIR/keep"
  for p in $(node_pids); do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 150); do
    alive=0
    for p in $(node_pids); do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for p in $(node_pids); do kill -KILL "$p" 2>/dev/null || true; done
  wait "${SUPERVISORS[@]}" 2>/dev/null || true
  SUPERVISORS=(); CLUSTER_DIR=
}
cleanup() { stop_cluster; if [ -n "${KEEP_WORK:-}" ]; then echo "node logs kept under $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# Each node runs in a restart loop (the failover scenario SIGKILLs leaders) until stop_cluster.
start_cluster() {  # name, max_batch_commands
  local dir="$WORK/$1"
  mkdir -p "$dir"
  # History kept whole, so that every acknowledged write can be looked up afterwards.
  # Many load connections come from one address: no per-address cap in the way.
  printf '[raft_timing]\nmax_batch_commands = %s\n[history]\nmax_entries = 100000000\n[clients]\nhttp_max_connections_per_ip = 100000\n' "$2" >"$dir/extra.toml"
  touch "$dir/keep"
  CLUSTER_DIR=$dir
  for n in 1 2 3; do
    (
      while [ -e "$dir/keep" ]; do
        "$BIN" node --config "$dir/extra.toml" --id $n --data-dir "$dir/node$n" \
          --http 127.0.0.1:$((7600 + n)) --raft 127.0.0.1:$((7700 + n)) --quic 127.0.0.1:$((7800 + n)) \
          --peers 1=127.0.0.1:7701,2=127.0.0.1:7702,3=127.0.0.1:7703 --shards "$SHARDS" >>"$dir/node$n.log" 2>&1 &
        echo $! >"$dir/node$n.pid"
        [ -e "$dir/keep" ] || kill -TERM $! 2>/dev/null
        wait $! 2>/dev/null || true
        sleep 0.2
      done
    ) &
    SUPERVISORS+=($!)
  done
  for n in 1 2 3; do
    ready=0
    for _ in $(seq 1 300); do curl -fs "http://127.0.0.1:$((7600 + n))/ready" >/dev/null 2>&1 && ready=1 && break; sleep 0.1; done
    [ "$ready" = 1 ] || { echo "node $n not ready within 30 s; its log:" >&2; tail -n 20 "$dir/node$n.log" >&2; exit 1; }
  done
  sleep 3 # leader placement settles (it starts 2 s after boot)
  CAS=(--ca "$dir/node1/tls/cert.pem" --ca "$dir/node2/tls/cert.pem" --ca "$dir/node3/tls/cert.pem")
}

# Runs `chorus bench <args>` ROUNDS times; labels each JSON line with a config name and the command.
rounds() {  # config, bench args...
  local config=$1; shift
  for _ in $(seq 1 "$ROUNDS"); do
    if ! "$BIN" bench "$@" >"$WORK/run.out" 2>&1; then
      echo "FAILED: chorus bench $1 (config $config):" >&2; tail -n 20 "$WORK/run.out" >&2; exit 1
    fi
    grep -v '^{' "$WORK/run.out" >&2 || true
    grep '^{' "$WORK/run.out" | tail -n 1 |
      python3 -c 'import json,sys; r=json.loads(sys.stdin.read()); r["config"]=sys.argv[1]; r["command"]=sys.argv[2]; print(json.dumps(r))' \
        "$config" "chorus bench $(printf '%s ' "$@" | sed -e "s| --ca $WORK/[a-z0-9-]*/node[0-9]/tls/cert.pem||g")" |
      tee -a "$WORK/results.jsonl"
  done
}

run_publish() {
  start_cluster publish 512
  rounds "publish" publish "${QUIC[@]}" "${CAS[@]}" --publishers "$PUBLISHERS" --window "$WINDOW" \
    --channels "$CHANNELS" --payload "$PAYLOAD" --duration "$DURATION"
  stop_cluster
}

run_publish_http() {
  for batching in "batched 512" "unbatched 1"; do
    set -- $batching
    start_cluster "http-$1" "$2"
    rounds "publish-http-$1" publish-http --node http://127.0.0.1:7601 --node http://127.0.0.1:7602 \
      --node http://127.0.0.1:7603 --concurrency "$CONCURRENCY" --payload "$PAYLOAD" --duration "$DURATION"
    stop_cluster
  done
}

run_e2e() {
  start_cluster e2e 512
  rounds "e2e-${RATE}/s" e2e --subscribe-node 127.0.0.1:7801 --subscribe-node 127.0.0.1:7802 \
    --subscribe-node 127.0.0.1:7803 --publish-node 127.0.0.1:7802 "${CAS[@]}" \
    --rate "$RATE" --payload "$PAYLOAD" --duration "$DURATION"
  stop_cluster
}

run_fanout() {
  start_cluster fanout 512
  rounds "fanout-${SUBSCRIBERS}" fanout "${QUIC[@]}" "${CAS[@]}" --subscribers "$SUBSCRIBERS" \
    --rate "$FANOUT_RATE" --payload "$PAYLOAD" --duration "$DURATION"
  stop_cluster
}

run_connections() {  # a fresh cluster per round: freed memory is not given back to the OS
  local total=$ROUNDS
  for transport in quic websocket; do
    [ "$transport" = websocket ] && [ "$WS_CONNECTIONS" = 0 ] && continue
    local count=$CONNECTIONS label=connections-$CONNECTIONS
    [ "$transport" = websocket ] && count=$WS_CONNECTIONS label=connections-ws-$WS_CONNECTIONS
    for _ in $(seq 1 "$total"); do
      start_cluster connections 512
      ROUNDS=1 rounds "$label" connections --node 127.0.0.1:7801 \
        --http http://127.0.0.1:7601 "${CAS[@]}" --count "$count" --transport "$transport" --hold-secs "$HOLD_SECS"
      stop_cluster
      rm -rf "$WORK/connections"
    done
  done
}

run_failover() {
  start_cluster failover 512
  rounds "failover" failover "${QUIC[@]}" "${HTTP[@]}" "${CAS[@]}" --kills "$KILLS"
  stop_cluster
}

run_typing() {
  start_cluster typing 512
  rounds "typing" typing --typist-node 127.0.0.1:7802 --subscriber-node 127.0.0.1:7801 \
    --subscriber-node 127.0.0.1:7802 --subscriber-node 127.0.0.1:7803 "${CAS[@]}" --changes "$CHANGES"
  stop_cluster
}

run_session() {
  start_cluster session 512
  rounds "session-s${SESSIONS}-w${SESSION_WINDOW}" session "${QUIC[@]}" "${CAS[@]}" \
    --window "$SESSION_WINDOW" --sessions "$SESSIONS" --duration "$DURATION"
  stop_cluster
}

case "$SCENARIO" in
  standard) run_publish; run_e2e; run_fanout; run_connections; run_failover; run_typing; run_session ;;
  publish) run_publish ;;
  publish-http) run_publish_http ;;
  e2e) run_e2e ;;
  fanout) run_fanout ;;
  connections) run_connections ;;
  failover) run_failover ;;
  typing) run_typing ;;
  session) run_session ;;
  *) echo "unknown SCENARIO=$SCENARIO (standard, publish, publish-http, e2e, fanout, connections, failover, typing, session)" >&2; exit 2 ;;
esac
python3 scripts/bench_table.py "$WORK/results.jsonl" ${WRITE_DOCS:+--write docs/benchmarks.md} --rounds "$ROUNDS"
