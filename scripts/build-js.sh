#!/usr/bin/env bash
# Compiles src/ to plain JavaScript in dist/ (tsconfig.build.json), which bin/kspan
# runs while it is current. Running the .ts sources makes Node load its type
# stripper, a WebAssembly module with its own memory, for the agent's whole life:
# about 15 MB of RSS (BENCHMARKS.md, memory). dist/.built marks a complete build;
# bin/kspan runs the sources instead while any file under src/ is newer.
# Idempotent: nothing to do while dist/ is current.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=dist/.built
if [[ -f $stamp ]] && [[ -z $(find src tsconfig.json tsconfig.build.json -newer "$stamp" -print -quit) ]]; then
  exit 0
fi
printf 'setup: compiling src/ to dist/\n' >&2
tmp=$(mktemp -d dist.tmp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
npx tsc -p tsconfig.build.json --outDir "$tmp"
# What the modules read beside themselves (not the publisher's .mjs entries,
# which load its .ts sources: a traced service imports them from src/).
(cd src && find . -type f ! -name '*.ts' ! -name '*.mjs' -print0) | while IFS= read -r -d '' f; do
  mkdir -p "$tmp/$(dirname "$f")"
  cp -p "src/$f" "$tmp/$f"
done
touch "$tmp/.built"
rm -rf dist
mv "$tmp" dist
trap - EXIT
