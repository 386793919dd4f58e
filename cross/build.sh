#!/usr/bin/env bash
# Static musl builds of mcp-tunnel: x86_64, aarch64, armv7.
#
#   cross/build.sh TARGET [cargo args…]
#
# Two routes:
#   rustup  — when `rustup target list --installed` has TARGET (users with internet:
#             `rustup target add TARGET` and a cross linker); plain `cargo build --target`.
#   debian  — otherwise: Debian's rustc-web with -Zbuild-std (cross/setup-debian.sh installs it),
#             LLVM's libunwind.a from Debian's libunwind-16-dev for the target, and the musl specs
#             of Debian's cross gcc. This is the route that works on machines without rustup targets.
#
# Default cargo args: the agent-only edge build with the size profile. The binary is copied to
# target/dist/mcp-tunnel-agent-TARGET.
set -euo pipefail

target=${1:?usage: cross/build.sh TARGET [cargo args…]}
shift || true
if [ $# -eq 0 ]; then
    set -- --profile size --no-default-features --features agent
fi

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cache="$root/.cache/cross"
mkdir -p "$cache" target/dist

case "$target" in
    x86_64-unknown-linux-musl) deb_arch=amd64 gcc=musl-gcc specs= ;;
    aarch64-unknown-linux-musl) deb_arch=arm64 gcc=aarch64-linux-gnu-gcc specs=/usr/lib/aarch64-linux-musl/musl-gcc.specs ;;
    armv7-unknown-linux-musleabihf) deb_arch=armhf gcc=arm-linux-gnueabihf-gcc specs=/usr/lib/arm-linux-musleabihf/musl-gcc.specs ;;
    *) echo "cross/build.sh: unsupported target '$target'" >&2; exit 2 ;;
esac

profile_dir() {
    # Where cargo puts the binary for the given args (--release, --profile P, or debug).
    local prev= dir=debug
    for a in "$@"; do
        case "$prev" in --profile) dir=$a ;; esac
        case "$a" in --release) dir=release ;; --profile=*) dir=${a#--profile=} ;; esac
        prev=$a
    done
    [ "$dir" = dev ] && dir=debug
    echo "$dir"
}

upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
lower=$(echo "$target" | tr '-' '_')

if command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "cross: rustup route for $target"
    export "CARGO_TARGET_${upper}_LINKER=${CROSS_LINKER:-$gcc}"
    # ring compiles C and assembly: without CC_<triple> cc-rs looks for a
    # `<triple>-gcc` that Debian and most distributions do not ship.
    export "CC_${lower}=${CROSS_CC:-$gcc}"
    cargo build --target "$target" "$@"
else
    echo "cross: Debian rustc-web + build-std route for $target"
    [ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q '^rustc 1\.9[6-9]' || "$root/cross/setup-debian.sh"

    # LLVM libunwind for the target, with a shim for the glibc-only __fprintf_chk it references.
    unwind="$cache/unwind-$deb_arch"
    if [ ! -f "$unwind/libunwind.a" ]; then
        rm -rf "$unwind" && mkdir -p "$unwind/deb"
        (cd "$unwind/deb" && apt-get download -qq "libunwind-16-dev:$deb_arch")
        dpkg-deb -x "$unwind"/deb/*.deb "$unwind/x"
        cp "$(find "$unwind/x" -name libunwind.a | head -n 1)" "$unwind/libunwind.a"
        cat > "$unwind/shim.c" <<'EOF'
#include <stdarg.h>
#include <stdio.h>
int __fprintf_chk(FILE *f, int flag, const char *fmt, ...) {
    (void)flag;
    va_list ap;
    va_start(ap, fmt);
    int n = vfprintf(f, fmt, ap);
    va_end(ap);
    return n;
}
EOF
        if [ -n "$specs" ]; then
            "$gcc" -specs "$specs" -O2 -c "$unwind/shim.c" -o "$unwind/shim.o"
        else
            "$gcc" -O2 -c "$unwind/shim.c" -o "$unwind/shim.o"
        fi
        ar rcs "$unwind/libunwind.a" "$unwind/shim.o"
    fi

    # The cross gcc with musl's specs, as one command cargo and cc-rs can call.
    wrapper="$cache/$target-gcc"
    if [ -n "$specs" ]; then
        printf '#!/bin/sh\nexec %s -specs %s "$@"\n' "$gcc" "$specs" > "$wrapper"
    else
        printf '#!/bin/sh\nexec %s "$@"\n' "$gcc" > "$wrapper"
    fi
    chmod +x "$wrapper"

    export "CARGO_TARGET_${upper}_LINKER=$wrapper" "CC_${lower}=$wrapper" "AR_${lower}=ar"
    # Size levers that need build-std (so only on this route):
    # - std built with only `optimize_for_size` (std's smaller sort/formatting code), i.e.
    #   without the default `backtrace` (and `panic-unwind`, unused under panic=abort): a panic
    #   still prints its one-line message and location, but no symbolized backtrace, which
    #   drops std's DWARF symbolizer (gimli, addr2line, miniz, demangler): ~120 KB of code.
    # - no unwind tables: nothing unwinds under panic=abort, and .eh_frame/.eh_frame_hdr were
    #   275 KB (15%) of the aarch64 binary.
    # CROSS_STD_FEATURES / CROSS_RUSTFLAGS override or extend these.
    std_features=${CROSS_STD_FEATURES-optimize_for_size}
    export "CARGO_TARGET_${upper}_RUSTFLAGS=-C target-feature=+crt-static -C link-self-contained=no -C relocation-model=static -L $unwind -C force-unwind-tables=no ${CROSS_RUSTFLAGS:-}"
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
    # A separate target dir: Debian's rustc must not share artifacts with rustup's.
    export CARGO_TARGET_DIR="$root/target/cross"
    /usr/bin/cargo build -Zbuild-std=std,panic_abort "-Zbuild-std-features=$std_features" --target "$target" "$@"
fi

dir=$(profile_dir "$@")
out="${CARGO_TARGET_DIR:-$root/target}/$target/$dir/mcp-tunnel"
cp "$out" "target/dist/mcp-tunnel-agent-$target"
ls -l "target/dist/mcp-tunnel-agent-$target"
file "target/dist/mcp-tunnel-agent-$target" 2>/dev/null || true
