#!/usr/bin/env bash
# Operations tests beyond `cargo test` (run by `make ops`, part of `make test`):
#
#   scripts   init files: `sh -n` (and busybox ash), every flag they pass and every
#             variable conf.d sets is one the agent knows
#   chroot    the static x86_64 agent alone in an empty chroot (the binary and a CA
#             file: what FROM scratch gives it), as uid 65532, carries a real MCP call
#   aarch64   the static aarch64 agent under qemu-aarch64-static carries a real MCP call
#   armv7     the same for armv7 under qemu-arm-static (only with OPS_ARMV7=1)
#   runsv     scripts/init/runit/run under runsv: a killed agent is restarted
#   openrc    scripts/init/openrc under openrc-run + supervise-daemon in a private
#             mount namespace: start, respawn after a kill, reload (SIGHUP), stop
#
#   scripts/ops-tests.sh [TEST...]     default: all of the above (armv7 only with OPS_ARMV7=1)
#
# Every MCP call goes AI client (curl) → relay → agent → sample MCP server, all
# on 127.0.0.1 with free ports; relay and sample server are the host debug build.
# The static builds come from cross/build.sh (cached under target/cross; the
# first run on a fresh machine installs Debian's toolchain, 2–5 min).
# chroot, runsv-free root checks and openrc need root; without it they are
# reported as SKIP, never as passed.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CARGO="${CARGO:-cargo}"
HOST_BIN="$ROOT/target/debug/mcp-tunnel"
DIST="$ROOT/target/dist"
WAIT_STEPS=200 # × 0.05 s = 10 s for anything to come up

if (($# > 0)); then
    TESTS=("$@")
else
    TESTS=(scripts chroot aarch64 runsv openrc)
    if [[ "${OPS_ARMV7:-0}" == 1 ]]; then TESTS+=(armv7); fi
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcp-ops.XXXXXX")"
chmod 755 "$WORK" # the agent runs as other users in some tests
PIDS=()
RESULTS=()
FAILED=0

log() { printf 'ops: %s\n' "$*" >&2; }

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${OPS_KEEP:-0}" == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

is_root() { [[ $(id -u) == 0 ]]; }

# wait_for DESCRIPTION COMMAND...: polls COMMAND until it succeeds (10 s).
wait_for() {
    local what="$1"; shift
    for _ in $(seq "$WAIT_STEPS"); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    log "timed out waiting for $what"
    return 1
}

# The port from a `listening on 127.0.0.1:PORT` line in FILE.
listening_port() { sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$1" | head -n1; }
has_listening_line() { [[ -n "$(listening_port "$1")" ]]; }

json_field() { sed -n "s/.*\"$1\" *: *\"\\([^\"]*\\)\".*/\\1/p" | head -n1; }

# ------------------------------------------------------------------ relay + sample server

start_backends() {
    [[ -n "${RELAY_PORT:-}" ]] && return 0
    log "building the host binary (relay, sample server)"
    "$CARGO" build --quiet || return 1
    "$HOST_BIN" relay init --state "$WORK/state" >"$WORK/init.json" || return 1
    TUNNEL_ID="$(json_field tunnel_id <"$WORK/init.json")"
    RUNTIME_KEY="$(json_field runtime_key <"$WORK/init.json")"
    CONNECTOR_KEY="$(json_field connector_key <"$WORK/init.json")"
    "$HOST_BIN" relay serve --state "$WORK/state" --listen 127.0.0.1:0 \
        --metrics-listen "unix:$WORK/relay-metrics.sock" >"$WORK/relay.out" 2>"$WORK/relay.log" &
    PIDS+=("$!")
    "$HOST_BIN" sample-server --listen 127.0.0.1:0 --quiet >"$WORK/sample.out" 2>"$WORK/sample.log" &
    PIDS+=("$!")
    wait_for "relay" has_listening_line "$WORK/relay.out" || { cat "$WORK/relay.log" >&2; return 1; }
    wait_for "sample server" has_listening_line "$WORK/sample.out" || return 1
    RELAY_PORT="$(listening_port "$WORK/relay.out")"
    SAMPLE_PORT="$(listening_port "$WORK/sample.out")"
    MCP_URL="http://127.0.0.1:$RELAY_PORT/v1/mcp/$TUNNEL_ID"
}

# mcp BODY [HEADER...]: one MCP POST through the relay; STATUS, $WORK/h, $WORK/b.
mcp() {
    local body="$1"; shift
    local args=(-sS -X POST "$MCP_URL" -o "$WORK/b" -D "$WORK/h" -w '%{http_code}' --max-time 15
        -H "Authorization: Bearer $CONNECTOR_KEY"
        -H 'Content-Type: application/json'
        -H 'Accept: application/json, text/event-stream')
    local h
    for h in "$@"; do args+=(-H "$h"); done
    STATUS="$(curl "${args[@]}" --data-binary "$body" 2>/dev/null)" || STATUS=000
}

agent_connected() {
    mcp '{"jsonrpc":"2.0","id":0,"method":"ping"}'
    [[ "$STATUS" != 503 && "$STATUS" != 000 ]]
}

# tunnel_call MESSAGE: initialize, then tools/call echo MESSAGE through the tunnel.
tunnel_call() {
    local message="$1"
    wait_for "the agent's first poll" agent_connected || return 1
    mcp '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"ops-tests","version":"1"}}}'
    [[ "$STATUS" == 200 ]] || { log "initialize answered $STATUS: $(cat "$WORK/b")"; return 1; }
    local session
    session="$(tr -d '\r' <"$WORK/h" | grep -i '^mcp-session-id:' | head -n1 | cut -d: -f2- | tr -d ' ')" || true
    local hs=("MCP-Protocol-Version: 2025-11-25")
    [[ -n "$session" ]] && hs+=("Mcp-Session-Id: $session")
    mcp '{"jsonrpc":"2.0","method":"notifications/initialized"}' "${hs[@]}"
    mcp '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"'"$message"'"}}}' "${hs[@]}"
    [[ "$STATUS" == 200 ]] && grep -q -- "$message" "$WORK/b" || {
        log "tools/call answered $STATUS: $(cat "$WORK/b")"
        return 1
    }
}

# The agent's environment (no flags: the same variables an env-file carries).
agent_env() {
    printf '%s\n' \
        "CONTROL_PLANE_BASE_URL=http://127.0.0.1:$RELAY_PORT" \
        "CONTROL_PLANE_TUNNEL_ID=$TUNNEL_ID" \
        "CONTROL_PLANE_API_KEY=$RUNTIME_KEY" \
        "MCP_SERVER_URL=http://127.0.0.1:$SAMPLE_PORT/mcp" \
        "CONTROL_PLANE_POLL_TIMEOUT=2s" \
        "LOG_FORMAT=json"
}

# run_agent_call NAME HEALTH_ADDR COMMAND...: starts COMMAND (an agent) with
# agent_env, makes a tunnel call, checks /readyz and /metrics, stops it with SIGTERM.
run_agent_call() {
    local name="$1" health="$2"; shift 2
    local envs=()
    mapfile -t envs < <(agent_env)
    env -i "${envs[@]}" HEALTH_LISTEN_ADDR="$health" SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
        "$@" agent >"$WORK/$name.out" 2>"$WORK/$name.log" &
    local pid=$!
    PIDS+=("$pid")
    if ! tunnel_call "through the $name agent"; then
        log "$name agent log:"; cat "$WORK/$name.log" >&2
        return 1
    fi
    # The health listener says where it bound (port 0 asked).
    local hport
    hport="$(sed -n 's/.*and \/metrics on 127\.0\.0\.1:\([0-9][0-9]*\)".*/\1/p' "$WORK/$name.log" | head -n1)"
    [[ -n "$hport" ]] || { log "no health address in the $name log"; return 1; }
    local ready metrics
    ready="$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$hport/readyz")"
    [[ "$ready" == 200 ]] || { log "$name /readyz: $ready"; return 1; }
    metrics="$(curl -sS "http://127.0.0.1:$hport/metrics")"
    grep -q '^mcp_tunnel_agent_commands_total{type="request",channel="main",outcome="answered"} [1-9]' <<<"$metrics" \
        || { log "$name /metrics has no answered request: $metrics"; return 1; }
    kill -TERM "$pid"
    local code=0
    wait "$pid" || code=$?
    [[ "$code" == 0 ]] || { log "$name agent exited $code after SIGTERM"; return 1; }
    if grep -q -- "$RUNTIME_KEY" "$WORK/$name.log"; then log "$name log holds the key"; return 1; fi
}

# ------------------------------------------------------------------ the tests

static_binary() {
    local target="$1" out="$DIST/mcp-tunnel-agent-$1"
    log "cross/build.sh $target (cached after the first build)"
    nice cross/build.sh "$target" >"$WORK/build-$target.log" 2>&1 || {
        tail -n 30 "$WORK/build-$target.log" >&2
        return 1
    }
    [[ -x "$out" ]] || { log "no $out"; return 1; }
    BUILT="$out"
}

ca_file() {
    for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
        [[ -f "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

test_chroot() {
    is_root || { SKIP_REASON="chroot needs root"; return 2; }
    static_binary x86_64-unknown-linux-musl || return 1
    start_backends || return 1
    local root="$WORK/chroot"
    mkdir -p "$root/etc/ssl/certs"
    cp "$BUILT" "$root/mcp-tunnel"
    cp "$(ca_file)" "$root/etc/ssl/certs/ca-certificates.crt"
    chmod 755 "$root" "$root/mcp-tunnel"
    # Nothing else: no shell, no libc, no /etc/passwd, no /dev, no /proc.
    local extra
    extra="$(cd "$root" && find . -mindepth 1 -not -type d | sort | tr '\n' ' ')"
    [[ "$extra" == "./etc/ssl/certs/ca-certificates.crt ./mcp-tunnel " ]] || { log "chroot holds $extra"; return 1; }
    # env -i clears PATH: name chroot(8) by its full path.
    run_agent_call chroot 127.0.0.1:0 "$(command -v chroot)" --userspec=65532:65532 "$root" /mcp-tunnel
}

test_qemu() {
    local target="$1" qemu="$2" name="$3"
    command -v "$qemu" >/dev/null || { SKIP_REASON="$qemu missing (qemu-user-static)"; return 2; }
    static_binary "$target" || return 1
    start_backends || return 1
    # Static: no program interpreter (readelf comes with binutils, which linking needs anyway).
    if readelf -l "$BUILT" | grep -q 'INTERP'; then log "$BUILT is dynamically linked"; return 1; fi
    run_agent_call "$name" 127.0.0.1:0 "$(command -v "$qemu")" "$BUILT"
}

test_aarch64() { test_qemu aarch64-unknown-linux-musl qemu-aarch64-static aarch64; }
test_armv7() { test_qemu armv7-unknown-linux-musleabihf qemu-arm-static armv7; }

# runsv from busybox when it has the applet (Alpine's does; Debian's
# busybox-static 1.35 does not), else runit's: the same run-script contract.
find_runsv() {
    if command -v busybox >/dev/null && busybox --list 2>/dev/null | grep -qx runsv; then
        RUNSV=(busybox runsv)
    elif command -v runsv >/dev/null; then
        RUNSV=(runsv)
    else
        return 1
    fi
}

supervised_pid() { cat "$1/supervise/pid" 2>/dev/null; }
is_agent_pid() { [[ -n "$1" ]] && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q ' agent --env-file '; }
new_agent_pid() {
    local p
    p="$(supervised_pid "$1")"
    [[ -n "$p" && "$p" != "$2" ]] && is_agent_pid "$p"
}

test_runsv() {
    find_runsv || { SKIP_REASON="no runsv (busybox with runsv, or Debian's runit)"; return 2; }
    start_backends || return 1
    local svc="$WORK/sv/mcp-tunnel"
    mkdir -p "$svc"
    cp scripts/init/runit/run "$svc/run"
    chmod 755 "$svc/run"
    { agent_env; echo "HEALTH_LISTEN_ADDR=off"; } >"$WORK/runsv.env"
    MCP_TUNNEL_BIN="$HOST_BIN" MCP_TUNNEL_ENV_FILE="$WORK/runsv.env" \
        "${RUNSV[@]}" "$svc" >"$WORK/runsv.log" 2>&1 &
    local runsv_pid=$!
    PIDS+=("$runsv_pid")
    wait_for "runsv to start the agent" is_agent_pid_of "$svc" || return 1
    local first
    first="$(supervised_pid "$svc")"
    tunnel_call "before the kill" || return 1
    kill -KILL "$first"
    wait_for "runsv to restart the agent" new_agent_pid "$svc" "$first" || {
        cat "$WORK/runsv.log" >&2
        return 1
    }
    log "runsv (${RUNSV[*]}): agent $first killed, restarted as $(supervised_pid "$svc")"
    tunnel_call "after the restart" || return 1
    # Down (TERM to the agent, which drains and exits 0), then runsv exits.
    local second
    second="$(supervised_pid "$svc")"
    printf d >"$svc/supervise/control"
    wait_for "the agent to stop" not_running "$second" || return 1
    printf x >"$svc/supervise/control"
    wait "$runsv_pid" 2>/dev/null || true
}
is_agent_pid_of() { is_agent_pid "$(supervised_pid "$1")"; }
not_running() { ! kill -0 "$1" 2>/dev/null; }

# OpenRC refuses services on a system it did not boot unless /run/openrc/softlevel
# exists; a private mount namespace gives it its own /run without touching the host.
test_openrc() {
    if ! command -v openrc-run >/dev/null && [[ ! -x /sbin/openrc-run ]]; then
        SKIP_REASON="openrc not installed (syntax and variables are checked by 'scripts')"
        return 2
    fi
    is_root || { SKIP_REASON="openrc-run needs root (mount namespace, command_user)"; return 2; }
    command -v unshare >/dev/null || { SKIP_REASON="no unshare (util-linux)"; return 2; }
    start_backends || return 1
    local t="$WORK/openrc"
    mkdir -p "$t/init.d" "$t/conf.d"
    chmod 755 "$t" "$t/init.d" "$t/conf.d"
    cp scripts/init/openrc/mcp-tunnel "$t/init.d/mcp-tunnel"
    chmod 755 "$t/init.d/mcp-tunnel"
    # The shipped conf.d, then this test's values (later lines win, in sh and in --env-file).
    {
        cat scripts/init/openrc/mcp-tunnel.confd
        agent_env
        echo "HEALTH_LISTEN_ADDR=off"
        echo "MCP_TUNNEL_BIN=$HOST_BIN"
        echo "MCP_TUNNEL_ENV_FILE=$t/conf.d/mcp-tunnel"
        echo "MCP_TUNNEL_USER=nobody"
        echo "MCP_TUNNEL_LOG=$t/agent.log"
        echo "MCP_TUNNEL_RESPAWN_DELAY=1"
    } >"$t/conf.d/mcp-tunnel"
    chmod 644 "$t/conf.d/mcp-tunnel"
    # The key stays out of the agent's log and out of the service's arguments.
    unshare -m bash -euo pipefail ${OPS_TRACE:+-x} -c '
        t="$1"; relay="$2"
        mount -t tmpfs tmpfs /run
        mkdir -p /run/openrc
        for d in started starting stopping inactive wasinactive failed exclusive daemons options scheduled hotplugged tmp; do
            mkdir -p /run/openrc/$d
        done
        touch /run/openrc/softlevel
        svc="$t/init.d/mcp-tunnel"
        # supervise-daemon outlives this namespace: never leave it running.
        stop_all() {
            "$svc" stop >/dev/null 2>&1 || true
            if [ -f /run/mcp-tunnel.pid ]; then kill -TERM "$(cat /run/mcp-tunnel.pid)" 2>/dev/null || true; fi
        }
        trap stop_all EXIT
        "$svc" --nodeps start
        sup=$(cat /run/mcp-tunnel.pid)
        child() { pgrep -P "$sup" 2>/dev/null | head -n1 || true; }
        for _ in $(seq 200); do [ -n "$(child)" ] && break; sleep 0.05; done
        first=$(child)
        [ -n "$first" ] || { echo "no agent under supervise-daemon $sup" >&2; exit 1; }
        uid=$(awk "/^Uid:/ {print \$2}" /proc/$first/status)
        [ "$uid" = "$(id -u nobody)" ] || { echo "agent runs as uid $uid" >&2; exit 1; }
        "$svc" status 2>&1 | grep started >/dev/null
        kill -KILL "$first"
        second=
        for _ in $(seq 200); do
            second=$(child)
            [ -n "$second" ] && [ "$second" != "$first" ] && break
            sleep 0.05
        done
        [ -n "$second" ] && [ "$second" != "$first" ] || { echo "not respawned" >&2; exit 1; }
        echo "openrc: agent $first killed, supervise-daemon respawned it as $second" >&2
        # SIGHUP before the new agent installed its handlers would end it (the
        # default action): wait until the second agent got past its startup check.
        for _ in $(seq 200); do
            [ "$(grep -c "control plane reachable" "$t/agent.log" 2>/dev/null)" -ge 2 ] && break
            sleep 0.05
        done
        # What logrotate does with "create 0640 nobody": rename, new empty file, then reload.
        mv "$t/agent.log" "$t/agent.log.1"
        install -o nobody -m 0640 /dev/null "$t/agent.log"
        "$svc" reload
        for _ in $(seq 200); do grep -qs "log file reopened" "$t/agent.log" && break; sleep 0.05; done
        grep -qs "log file reopened" "$t/agent.log" || { echo "reload did not reopen the log" >&2; exit 1; }
        "$svc" stop
        ! kill -0 "$second" 2>/dev/null || { echo "agent still running after stop" >&2; exit 1; }
        "$svc" status >/dev/null 2>&1 && { echo "status says running after stop" >&2; exit 1; }
        exit 0
    ' openrc "$t" "$RELAY_PORT" >"$WORK/openrc.log" 2>&1 || {
        cat "$WORK/openrc.log" >&2
        [[ -f "$t/agent.log" ]] && cat "$t/agent.log" >&2
        return 1
    }
    grep "respawned" "$WORK/openrc.log" | sed 's/^/ops: /' >&2 || true
    if grep -qs -- "$RUNTIME_KEY" "$t/agent.log" "$t/agent.log.1"; then log "openrc agent log holds the key"; return 1; fi
}

# Static checks that need no root: shell syntax, and every flag and variable the
# init files use is one the agent documents in --help.
test_scripts() {
    "$CARGO" build --quiet || return 1
    local help f
    help="$("$HOST_BIN" agent --help)"
    for f in scripts/init/runit/run scripts/init/openrc/mcp-tunnel scripts/init/openrc/mcp-tunnel.confd; do
        sh -n "$f" || { log "sh -n $f"; return 1; }
        if command -v busybox >/dev/null; then busybox sh -n "$f" || { log "busybox sh -n $f"; return 1; }; fi
    done
    local flag
    for flag in $(grep -ho -- '--[a-z][a-z.-]*' scripts/init/runit/run scripts/init/openrc/mcp-tunnel \
        scripts/init/systemd/mcp-tunnel.service | sort -u); do
        case "$flag" in --signal | --nodeps | --file | --owner | --mode) continue ;; esac
        grep -q -- "  $flag " <<<"$help" || { log "$flag is not an agent flag"; return 1; }
    done
    local var
    for var in $(sed -n 's/^\([A-Z_][A-Z0-9_]*\)=.*/\1/p' scripts/init/openrc/mcp-tunnel.confd); do
        grep -q -- "\[env: $var\]" <<<"$help" || { log "conf.d sets $var, which the agent does not read"; return 1; }
    done
    for var in $(grep -o '\${MCP_TUNNEL_[A-Z_]*' scripts/init/openrc/mcp-tunnel scripts/init/runit/run | sed 's/.*{//' | sort -u); do
        grep -q "$var" docs/operations.md || { log "$var is not documented in docs/operations.md"; return 1; }
    done
    grep -q 'ENV_FILE\|--env-file' scripts/init/openrc/mcp-tunnel || { log "openrc does not use --env-file"; return 1; }
}

# ------------------------------------------------------------------ runner

run_test() {
    local name="$1" start code=0
    start=$(date +%s)
    SKIP_REASON=""
    log "── $name"
    "test_$name" || code=$?
    local secs=$(($(date +%s) - start))
    case "$code" in
        0) RESULTS+=("PASS  $name (${secs}s)") ;;
        2) RESULTS+=("SKIP  $name: $SKIP_REASON") ;;
        *) RESULTS+=("FAIL  $name (${secs}s)"); FAILED=1 ;;
    esac
}

t0=$(date +%s)
for t in "${TESTS[@]}"; do
    declare -F "test_$t" >/dev/null || { log "unknown test $t"; exit 2; }
    run_test "$t"
done
echo
printf 'ops: %s\n' "${RESULTS[@]}"
echo "ops: $(($(date +%s) - t0))s in total"
exit "$FAILED"
