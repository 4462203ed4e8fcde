#!/usr/bin/env bash
# Starts the local 3-node cluster of cluster/node{1,2,3}.toml in the background.
# Pids go to data/node<n>.pid, logs to data/node<n>.log. Stop with scripts/cluster-down.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${CHORUS_BIN:-target/debug/chorus}
export CHORUS_CLUSTER_SECRET=${CHORUS_CLUSTER_SECRET:-chorus-dev-cluster-secret}
export CHORUS_JWT_SECRET=${CHORUS_JWT_SECRET:-chorus-dev-jwt-secret-change-me}
mkdir -p data
for n in 1 2 3; do
  if [ -f "data/node$n.pid" ] && kill -0 "$(cat "data/node$n.pid")" 2>/dev/null; then
    echo "node $n already running (pid $(cat "data/node$n.pid"))"; continue
  fi
  "$BIN" node --config "cluster/node$n.toml" >"data/node$n.log" 2>&1 &
  echo $! >"data/node$n.pid"
done
for n in 1 2 3; do
  for _ in $(seq 1 300); do
    if curl -fs "http://127.0.0.1:700$n/ready" >/dev/null 2>&1; then echo "node $n ready: http://127.0.0.1:700$n"; break; fi
    sleep 0.1
  done
done
echo "admin token: $("$BIN" token --sub operator --role admin --ttl 12h)"
