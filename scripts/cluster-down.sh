#!/usr/bin/env bash
# Stops the nodes started by scripts/cluster-up.sh (SIGTERM, then waits).
set -uo pipefail
cd "$(dirname "$0")/.."
for n in 1 2 3; do
  f="data/node$n.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f")
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "node $n stopped"
  fi
  rm -f "$f"
done
