# mcp-tunnel — see README.md
CARGO ?= cargo

.PHONY: all build run test bench bench-alloc lint

all: build

build:
	$(CARGO) build --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: lint
	$(CARGO) test

# Allocation discipline: bytes per command must not grow, bursts leave nothing behind.
bench-alloc:
	$(CARGO) test --release --test alloc_discipline -- --ignored --nocapture
