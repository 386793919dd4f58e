# mcp-tunnel — see README.md
CARGO ?= cargo
export CARGO
# The test runner lives in the Python 2.x peers venv that scripts/test-deps.sh builds.
E2E_PYTHON ?= .cache/venv-mcp2/bin/python
PYTEST_ARGS ?=

.PHONY: all build run test bench bench-smoke bench-alloc fuzz lint test-deps unit no-tokio e2e static cross ops

all: build

build:
	$(CARGO) build --release

# Builds, starts a relay, a sample MCP server and an agent, makes one real MCP
# call through the tunnel and shows every hop. Needs only cargo and curl.
run:
	scripts/run-demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --no-default-features --features agent -- -D warnings

test-deps:
	scripts/test-deps.sh

unit:
	$(CARGO) test

no-tokio:
	scripts/check-no-tokio.sh

# End-to-end: real MCP peers through relay + agent, and the agent against a fake
# control plane. Exit 5 (no tests collected) fails like any other error.
e2e:
	$(E2E_PYTHON) -m pytest tests/e2e $(PYTEST_ARGS)

# Direct nginx vs relay+agent vs rathole (when installed: `cargo install rathole`
# or RATHOLE=path); writes docs/benchmarks.md and prints PASS/FAIL per budget.
bench: build
	python3 scripts/bench.py

# One short run per figure with the debug build: checks that figures come out.
bench-smoke:
	$(CARGO) build
	python3 scripts/bench.py --smoke --bin target/debug/mcp-tunnel

# Static agent-only edge builds (size profile) into target/dist/; see cross/build.sh.
static:
	cross/build.sh x86_64-unknown-linux-musl

cross:
	cross/build.sh aarch64-unknown-linux-musl
	cross/build.sh armv7-unknown-linux-musleabihf

# The static agent in an empty chroot, the aarch64 agent under qemu, the runit
# and OpenRC services (scripts/ops-tests.sh; OPS_ARMV7=1 adds armv7 under qemu).
ops:
	scripts/ops-tests.sh

# Everything, in this order: dependencies, format, lints (both builds), unit
# tests, the no-tokio rule, end-to-end, operations (chroot, qemu, init files).
# Sequential even under `make -j`.
test:
	$(MAKE) test-deps
	$(MAKE) lint
	$(MAKE) unit
	$(MAKE) no-tokio
	$(MAKE) e2e
	$(MAKE) ops
	$(MAKE) bench-smoke

# Coverage-guided fuzzing of src/proto (tests/fuzz); FUZZ_SECONDS per target.
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)

# Allocation discipline: bytes per command must not grow, bursts leave nothing behind.
bench-alloc:
	$(CARGO) test --release --test alloc_discipline -- --ignored --nocapture
