#!/usr/bin/env bash
# `make run`: build, start a relay (fresh state in a temporary directory), the
# sample MCP server and an agent, make a real MCP tool call through the tunnel
# with curl, print what crossed each hop, and stop everything.
#
#   AI client (curl) ─POST /v1/mcp/{tunnel}─▶ relay ◀─long-poll─ agent ─POST /mcp─▶ sample MCP server
#
# Needs only cargo and curl. Everything listens on 127.0.0.1, on free ports.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CARGO="${CARGO:-cargo}"
BIN="$ROOT/target/debug/mcp-tunnel"
KEY_ENV=MCP_TUNNEL_DEMO_RUNTIME_KEY
MESSAGE="${DEMO_MESSAGE:-hello from make run}"

bold() { if [[ -t 1 ]]; then printf '\033[1m%s\033[0m\n' "$*"; else printf '%s\n' "$*"; fi; }
hop() { echo; bold "── $*"; }
die() { echo "run-demo: $*" >&2; exit 1; }
indent() { sed 's/^/    /'; }

command -v curl >/dev/null || die "curl is needed (apt-get install curl)"
command -v "$CARGO" >/dev/null || die "cargo is needed (https://rustup.rs)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/mcp-tunnel-demo.XXXXXX")"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        # Up to 3 s for a graceful stop, then no more waiting.
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME ARGS...: runs the binary in the background, logs to $WORK/NAME.log.
start() {
    local name="$1"; shift
    "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PIDS+=("$!")
}

# wait_listening NAME: the port from the `listening on 127.0.0.1:PORT` line.
wait_listening() {
    local name="$1" port=""
    for _ in $(seq 200); do
        port="$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$WORK/$name.out" | head -n1)"
        if [[ -n "$port" ]]; then echo "$port"; return 0; fi
        sleep 0.05
    done
    echo "run-demo: $name did not start; its output:" >&2
    cat "$WORK/$name.out" "$WORK/$name.log" >&2
    return 1
}

json_field() { sed -n "s/.*\"$1\" *: *\"\\([^\"]*\\)\".*/\\1/p" | head -n1; }

bold "Building mcp-tunnel (cargo build)…"
(cd "$ROOT" && "$CARGO" build --quiet)

"$BIN" relay init --state "$WORK/state" >"$WORK/init.json" 2>"$WORK/init.log" \
    || die "relay init failed: $(cat "$WORK/init.log")"
TUNNEL_ID="$(json_field tunnel_id <"$WORK/init.json")"
RUNTIME_KEY="$(json_field runtime_key <"$WORK/init.json")"
CONNECTOR_KEY="$(json_field connector_key <"$WORK/init.json")"
[[ -n "$TUNNEL_ID" && -n "$RUNTIME_KEY" && -n "$CONNECTOR_KEY" ]] \
    || die "relay init printed no credentials (is the relay built on this branch?): $(cat "$WORK/init.log")"

start relay "$BIN" relay serve --state "$WORK/state" --listen 127.0.0.1:0 --audit-log "$WORK/audit.jsonl"
RELAY_PORT="$(wait_listening relay)"
start sample "$BIN" sample-server --listen 127.0.0.1:0 --trace
SAMPLE_PORT="$(wait_listening sample)"
export "$KEY_ENV=$RUNTIME_KEY"
start agent "$BIN" agent \
    --control-plane.base-url "http://127.0.0.1:$RELAY_PORT" \
    --control-plane.tunnel-id "$TUNNEL_ID" \
    --control-plane.api-key "env:$KEY_ENV" \
    --mcp.server-url "http://127.0.0.1:$SAMPLE_PORT/mcp" \
    --health.listen-addr off \
    --log.level debug

MCP_URL="http://127.0.0.1:$RELAY_PORT/v1/mcp/$TUNNEL_ID"
bold "Tunnel $TUNNEL_ID"
echo "    relay   http://127.0.0.1:$RELAY_PORT  (state in a temporary directory)"
echo "    agent   polls the relay, forwards to http://127.0.0.1:$SAMPLE_PORT/mcp"
echo "    client  $MCP_URL"

# mcp BODY [HEADER...]: one MCP POST through the tunnel; sets STATUS, leaves
# headers in $WORK/h and the body in $WORK/b. The connector key never prints.
mcp() {
    local body="$1"; shift
    local args=(-sS -X POST "$MCP_URL" -o "$WORK/b" -D "$WORK/h" -w '%{http_code}' --max-time 30
        -H "Authorization: Bearer $CONNECTOR_KEY"
        -H 'Content-Type: application/json'
        -H 'Accept: application/json, text/event-stream')
    local h
    for h in "$@"; do args+=(-H "$h"); done
    STATUS="$(curl "${args[@]}" --data-binary "$body")" || STATUS=000
}

# The relay answers 503 tunnel_client_not_connected until the agent's first poll.
for i in $(seq 100); do
    kill -0 "${PIDS[2]}" 2>/dev/null || { cat "$WORK/agent.log" >&2; die "the agent exited"; }
    mcp '{"jsonrpc":"2.0","id":0,"method":"ping"}'
    if [[ "$STATUS" != 503 && "$STATUS" != 000 ]]; then break; fi
    ((i == 100)) && die "the agent did not connect within 10 s: $(cat "$WORK/b" 2>/dev/null)"
    sleep 0.1
done

mcp '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"make-run","version":"1"}}}'
[[ "$STATUS" == 200 ]] || die "initialize through the tunnel answered $STATUS: $(cat "$WORK/b")"
SESSION="$(tr -d '\r' <"$WORK/h" | grep -i '^mcp-session-id:' | head -n1 | cut -d: -f2- | tr -d ' ')" || true
SESSION_HEADERS=("MCP-Protocol-Version: 2025-11-25")
if [[ -n "$SESSION" ]]; then SESSION_HEADERS+=("Mcp-Session-Id: $SESSION"); fi
bold "MCP session opened through the tunnel: initialize → $STATUS, Mcp-Session-Id ${SESSION:-(none)}"
mcp '{"jsonrpc":"2.0","method":"notifications/initialized"}' "${SESSION_HEADERS[@]}"

# Marks: only what the logs say from here on belongs to the call.
touch "$WORK/audit.jsonl"
audit_mark=$(wc -l <"$WORK/audit.jsonl"); relay_mark=$(wc -l <"$WORK/relay.log"); agent_mark=$(wc -l <"$WORK/agent.log"); sample_mark=$(wc -l <"$WORK/sample.log")

CALL='{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"'"$MESSAGE"'"}}}'
hop "1. AI client → relay: POST $MCP_URL"
echo "    Authorization: Bearer <connector key>"
for h in "${SESSION_HEADERS[@]}"; do echo "    $h"; done
echo "$CALL" | indent
mcp "$CALL" "${SESSION_HEADERS[@]}"
sleep 0.2 # let the log lines land

hop "2. relay → agent: the call became a command on the agent's long poll (relay audit line, relay and agent logs)"
tail -n +"$((audit_mark + 1))" "$WORK/audit.jsonl" | sed 's/^/    audit │ /'
tail -n +"$((relay_mark + 1))" "$WORK/relay.log" | sed 's/^/    relay │ /'
tail -n +"$((agent_mark + 1))" "$WORK/agent.log" | sed 's/^/    agent │ /'

hop "3. agent → MCP server: what the sample server received and answered"
tail -n +"$((sample_mark + 1))" "$WORK/sample.log" | indent

hop "4. relay → AI client: the answer (HTTP $STATUS)"
tr -d '\r' <"$WORK/h" | grep -i -E '^(content-type|mcp-session-id):' | indent || true
indent <"$WORK/b"
echo

if [[ "$STATUS" == 200 ]] && grep -q -- "$MESSAGE" "$WORK/b"; then
    bold "✓ echo answered through the tunnel"
else
    die "the call through the tunnel did not come back as expected (HTTP $STATUS)"
fi

if [[ -n "$SESSION" ]]; then
    curl -sS -o /dev/null -w '' -X DELETE "$MCP_URL" -H "Authorization: Bearer $CONNECTOR_KEY" \
        -H "Mcp-Session-Id: $SESSION" --max-time 10 || true
    echo "    session closed (DELETE → session_termination)"
fi
bold "Stopping relay, agent and sample server…"
