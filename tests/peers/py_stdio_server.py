"""A real MCP server over stdio (the official Python SDK) for the end-to-end
tests of the agent's stdio targets. Same tools as py_server.py.

    python py_stdio_server.py

Runs with either venv: SDK 2.x (`MCPServer`) or SDK 1.x (`FastMCP`). Prints a
banner on stderr (the agent logs it, prefixed with the channel) and nothing
but JSON-RPC on stdout.
"""

import os
import sys

try:  # SDK 2.x
    from mcp.server.mcpserver import Context, MCPServer as Server

    SDK = 2
except ImportError:  # SDK 1.x
    from mcp.server.fastmcp import Context, FastMCP as Server

    SDK = 1

NAME = f"py-stdio-sdk{SDK}"
server = Server(NAME, log_level="WARNING")


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
    pattern = "0123456789abcdef"
    return (pattern * (size // len(pattern) + 1))[:size]


@server.tool()
def pid() -> str:
    """The server's process id (which child answered)."""
    return str(os.getpid())


if __name__ == "__main__":
    print(f"{NAME} starting on stdio (pid {os.getpid()})", file=sys.stderr, flush=True)
    server.run("stdio")
