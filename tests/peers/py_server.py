"""A real MCP server (the official Python SDK) for the end-to-end tests.

Runs with either venv: SDK 2.x (`mcp.server.mcpserver.MCPServer`) or SDK 1.x
(`mcp.server.fastmcp.FastMCP`). Binds 127.0.0.1 only; `--port 0` picks a free
port. Prints `listening on 127.0.0.1:PORT` on stdout once the socket listens.

    python py_server.py --port 0 --mode default|json|stateless

Modes: default = SSE answers + sessions; json = `json_response` (application/json
answers, progress dropped by the SDK); stateless = `stateless_http` (no session).
"""

import argparse
import socket
import sys

import uvicorn

try:  # SDK 2.x
    from mcp.server.mcpserver import Context, MCPServer

    SDK = 2
except ImportError:  # SDK 1.x
    from mcp.server.fastmcp import Context, FastMCP

    SDK = 1

HOST = "127.0.0.1"


def build_app(mode: str):
    json_response = mode == "json"
    stateless = mode == "stateless"
    name = f"py-server-sdk{SDK}-{mode}"
    if SDK == 2:
        server = MCPServer(name, log_level="WARNING")
    else:
        server = FastMCP(
            name,
            host=HOST,
            log_level="WARNING",
            json_response=json_response,
            stateless_http=stateless,
        )

    @server.tool()
    def echo(message: str) -> str:
        """Returns the message unchanged."""
        return message

    @server.tool()
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    async def progress(steps: int, ctx: Context) -> str:
        """Reports progress `steps` times, then answers."""
        for i in range(1, steps + 1):
            await ctx.report_progress(i, steps, f"step {i}")
        return f"done {steps}"

    @server.tool()
    def big(size: int) -> str:
        """Returns a string of exactly `size` bytes."""
        # A repeating ASCII pattern so corruption or truncation shows.
        pattern = "0123456789abcdef"
        return (pattern * (size // len(pattern) + 1))[:size]

    if SDK == 2:
        return server.streamable_http_app(json_response=json_response, stateless_http=stateless, host=HOST)
    return server.streamable_http_app()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=["default", "json", "stateless"], default="default")
    args = parser.parse_args()

    app = build_app(args.mode)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    print(f"listening on {HOST}:{port}", flush=True)
    print(f"py_server: mcp SDK {SDK}.x mode={args.mode}", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
