#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz / libFuzzer) of the sans-IO core.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     default 30; 0 = replay the seeds once
#
# Env: FUZZ_TARGETS="a b" (subset), FUZZ_SANITIZER=address|none (default:
# address, falling back to none when it cannot be built), CARGO_FUZZ_VERSION.
# The fuzz package lives in tests/fuzz (its own workspace). Committed seeds are
# in tests/fuzz/seeds/<target>; the growing corpus (tests/fuzz/corpus) and
# crash artifacts (tests/fuzz/artifacts) are not committed.
#
# Only stable Rust is available here: RUSTC_BOOTSTRAP=1 lets it accept the
# -Z flags cargo-fuzz passes (sanitizer coverage, -Zsanitizer).
set -euo pipefail

SECONDS_PER_TARGET="${1:-30}"
case "$SECONDS_PER_TARGET" in
'' | *[!0-9]*)
    echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2
    exit 2
    ;;
esac

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
FUZZ_DIR=tests/fuzz
CARGO_FUZZ_VERSION="${CARGO_FUZZ_VERSION:-0.13.2}"
ALL_TARGETS="decode_poll response_decode sse_feed jsonrpc_inspect json_validate response_timeout retry_after server_info_decode forward_headers"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"
export RUSTC_BOOTSTRAP=1
# The machine is shared: stay polite, one process at a time.
NICE=(nice -n 10)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION into ~/.cargo/bin" >&2
    "${NICE[@]}" cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Release + debug assertions: overflow checks are part of what we fuzz for.
build_flags=(--fuzz-dir "$FUZZ_DIR" -O -a)
sanitizer="${FUZZ_SANITIZER:-}"
if [ -z "$sanitizer" ]; then
    if "${NICE[@]}" cargo fuzz build "${build_flags[@]}" -s address; then
        sanitizer=address
    else
        echo "fuzz: AddressSanitizer build failed; falling back to -s none" >&2
        sanitizer=none
    fi
fi
build_flags+=(-s "$sanitizer")
"${NICE[@]}" cargo fuzz build "${build_flags[@]}"

# JSON fixtures seed the JSON targets' working corpus (copied, not duplicated in git).
fixture_seeds() {
    case "$1" in
    decode_poll) echo tests/fixtures/poll_command_envelope.json ;;
    response_decode) echo tests/fixtures/jsonrpc_notify_response.json ;;
    json_validate) echo tests/fixtures/poll_command_envelope.json tests/fixtures/jsonrpc_notify_response.json ;;
    esac
}

LOG_DIR="$FUZZ_DIR/artifacts/logs"
mkdir -p "$LOG_DIR"
failed=()
summary=()
for t in $TARGETS; do
    corpus="$FUZZ_DIR/corpus/$t"
    seeds="$FUZZ_DIR/seeds/$t"
    mkdir -p "$corpus" "$seeds"
    for f in $(fixture_seeds "$t"); do
        cp "$f" "$corpus/fixture_$(basename "$f")"
    done
    if [ "$SECONDS_PER_TARGET" -eq 0 ]; then
        run_args=(-runs=0)
    else
        run_args=(-max_total_time="$SECONDS_PER_TARGET")
    fi
    log="$LOG_DIR/$t.log"
    echo "fuzz: $t (${SECONDS_PER_TARGET}s, sanitizer $sanitizer)" >&2
    # New inputs go to the first corpus dir; the committed seeds stay untouched.
    if "${NICE[@]}" cargo fuzz run "${build_flags[@]}" "$t" "$corpus" "$seeds" -- \
        "${run_args[@]}" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        status=ok
    else
        status=FAILED
        failed+=("$t")
        grep -E "panicked at|ERROR: |SUMMARY|Test unit written to" "$log" >&2 || tail -n 30 "$log" >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 || true)
    summary+=("$(printf '%-20s %-7s execs=%-10s execs/s=%-8s %s' "$t" "$status" "${execs:-?}" "${rate:-?}" "$cov")")
done

printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (logs in $LOG_DIR, crash inputs in $FUZZ_DIR/artifacts/<target>)" >&2
    exit 1
fi
echo "fuzz: all ${SECONDS_PER_TARGET}s runs clean" >&2
