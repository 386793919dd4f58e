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

# Coverage-guided fuzzing of src/proto (tests/fuzz); FUZZ_SECONDS per target.
fuzz:
	scripts/fuzz.sh $(FUZZ_SECONDS)
