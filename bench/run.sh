#!/usr/bin/env bash
# Runs every benchmark (root); figures go in BENCHMARKS.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in bench/ring-buffer.ts bench/kernel-cost.ts bench/pipeline.ts bench/publisher.ts bench/agent.ts; do
  [[ -f $b ]] || continue
  echo "== $b"
  node "$b"
done
