#!/usr/bin/env bash
# Runs @modelcontextprotocol/server-everything over Streamable HTTP on 127.0.0.1.
#   run-everything.sh [PORT]   (0 or no argument: a free port)
# Prints `listening on 127.0.0.1:PORT` on stdout once ready; MCP endpoint is /mcp.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export PORT="${1:-0}"
exec node --require "$here/loopback-preload.cjs" \
    "$here/node_modules/@modelcontextprotocol/server-everything/dist/index.js" streamableHttp
