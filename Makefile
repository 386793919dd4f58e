# mcp-tunnel — see README.md
CARGO ?= cargo

.PHONY: all build run test bench lint

all: build

build:
	$(CARGO) build --release

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

test: lint
	$(CARGO) test
