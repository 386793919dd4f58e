#!/usr/bin/env bash
# The design card forbids tokio, even transitively: `cargo tree -i tokio` must
# find nothing, for every target platform and for the edge build too.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"
status=0
for features in "" "--no-default-features --features agent"; do
    # shellcheck disable=SC2086
    if out="$("$CARGO" tree -i tokio --target all -e normal,build,dev $features 2>&1)"; then
        echo "tokio is in the dependency graph (${features:-default features}):" >&2
        echo "$out" >&2
        status=1
    elif ! grep -q "did not match any packages" <<<"$out"; then
        # cargo failed for another reason: that is not proof of absence.
        echo "cargo tree failed (${features:-default features}):" >&2
        echo "$out" >&2
        status=1
    fi
done
if ((status == 0)); then echo "no tokio in the dependency graph"; fi
exit "$status"
