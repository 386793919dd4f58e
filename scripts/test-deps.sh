#!/usr/bin/env bash
# Installs what the end-to-end tests need: real MCP peers (Python SDK 2.x and
# 1.x, TypeScript SDK, server-everything) and, when listed, Debian packages.
#
# Idempotent and cached: each venv and node_modules carries a stamp with the
# hash of its lock file, so a second run only hashes files and exits.
# Everything lands under .cache/ and tests/peers/node/node_modules (git-ignored).
#
# Meant for a fresh Debian bookworm machine (run as root when apt packages
# are missing); needs python3 (with venv), node + npm. Registries: PyPI, npm, apt.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="$ROOT/.cache"
PEERS="$ROOT/tests/peers"

# Debian packages the tests need. Add names here (e.g. nginx tinyproxy
# busybox-static openssl); apt-get update runs only when one is missing.
# openssl: test certificates; tinyproxy: a real CONNECT proxy (tests/edge_proxy.rs, agent_edge.rs).
# ops-tests.sh: busybox (ash syntax checks, runsv where built in), runit (runsv),
# openrc (openrc-run, supervise-daemon), qemu-user-static, curl; cross/build.sh
# installs its own toolchain (cross/setup-debian.sh) on first use.
APT_PACKAGES=(openssl tinyproxy busybox-static runit openrc qemu-user-static curl procps)

log() { printf 'test-deps: %s\n' "$*" >&2; }

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

need_cmd() {
    command -v "$1" >/dev/null 2>&1 || { log "missing command: $1 ($2)"; exit 1; }
}

install_apt() {
    local missing=() p
    # python3 -m venv needs ensurepip, which Debian ships separately.
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
        APT_PACKAGES+=(python3-venv)
    fi
    for p in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return
    fi
    log "apt: installing ${missing[*]}"
    local sudo=()
    if [[ $(id -u) != 0 ]]; then sudo=(sudo); fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ensure_venv NAME REQUIREMENTS: a venv under .cache/NAME with exactly those pins.
ensure_venv() {
    local name="$1" req="$2" venv="$CACHE/$1"
    local want
    want="$(hash_of "$req")-$(python3 -c 'import sys; print(sys.version.split()[0])')"
    if [[ -f "$venv/.stamp" && "$(cat "$venv/.stamp")" == "$want" && -x "$venv/bin/python" ]]; then
        return
    fi
    log "venv $name: installing $(basename "$req")"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
    echo "$want" >"$venv/.stamp"
}

ensure_node() {
    local dir="$PEERS/node" want
    want="$(hash_of "$dir/package-lock.json")-$(node --version)"
    if [[ -f "$dir/node_modules/.stamp" && "$(cat "$dir/node_modules/.stamp")" == "$want" ]]; then
        return
    fi
    log "npm ci in tests/peers/node"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >"$dir/node_modules/.stamp"
}

main() {
    need_cmd python3 "Debian: python3"
    need_cmd node "Node.js 20"
    need_cmd npm "Node.js 20"
    mkdir -p "$CACHE"
    # One installer at a time (parallel `make test` runs share the cache).
    exec 9>"$CACHE/test-deps.lock"
    flock 9
    install_apt
    ensure_venv venv-mcp2 "$PEERS/requirements-mcp2.txt"
    ensure_venv venv-mcp1 "$PEERS/requirements-mcp1.txt"
    ensure_node
    log "ok"
}

main "$@"
