"""A real MCP client (the official Python SDK, 2.x or 1.x) for the end-to-end tests.

    python py_client.py URL [--header 'Authorization: Bearer KEY'] --scenario NAME [--scenario NAME ...]

Prints one JSON line per scenario: {"scenario": NAME, "ok": true|false, ...facts}
and exits 1 when a scenario failed. The facts are what the tests assert on; this
script only records what the SDK saw (it does not decide what is correct beyond
"the SDK call raised").

Scenarios: initialize, tools, echo, add, progress, big, terminate, modern (2.x only).
"""

import argparse
from contextlib import asynccontextmanager
import json
import sys
import time
import traceback

import anyio

try:  # SDK 2.x
    import httpx2 as httpx

    SDK = 2
except ImportError:  # SDK 1.x
    import httpx

    SDK = 1

from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SCENARIOS = ["initialize", "tools", "echo", "add", "progress", "big", "terminate", "modern"]
ECHO_MESSAGE = "hello through the tunnel: ünïcødé ✓ \"quotes\" \\ back"
PATTERN = "0123456789abcdef"


class Exchanges:
    """Every HTTP exchange the SDK made, seen through httpx event hooks."""

    def __init__(self) -> None:
        self.items: list[dict] = []

    async def on_response(self, response) -> None:
        req = response.request
        self.items.append(
            {
                "method": req.method,
                "status": response.status_code,
                "content_type": response.headers.get("content-type", ""),
                "session_id": response.headers.get("mcp-session-id"),
                "req_mcp_method": req.headers.get("mcp-method"),
                "req_mcp_name": req.headers.get("mcp-name"),
                "req_protocol_version": req.headers.get("mcp-protocol-version"),
            }
        )

    def session_ids(self) -> list[str]:
        return [x["session_id"] for x in self.items if x["session_id"]]


def make_http_client(headers: dict[str, str], exchanges: Exchanges):
    client = create_mcp_http_client(headers=headers, timeout=httpx.Timeout(30.0, read=60.0))
    client.event_hooks = {"request": [], "response": [exchanges.on_response]}
    return client


def transport_kwargs() -> dict:
    # A 2 MB result is one SSE event; the 2.x client caps an event at 1 MiB by default.
    return {"max_sse_event_size": None} if SDK == 2 else {}


class Conn:
    def __init__(self, session, init, exchanges, http) -> None:
        self.session = session
        self.init = init
        self.exchanges = exchanges
        self.http = http


@asynccontextmanager
async def legacy_session(url: str, headers: dict[str, str], exchanges: Exchanges, http):
    """The handshake-era client: streamable_http_client + ClientSession.initialize().
    Leaving it makes the SDK send DELETE for the session it holds."""
    async with streamable_http_client(url, http_client=http, **transport_kwargs()) as streams:
        async with ClientSession(streams[0], streams[1]) as session:
            init = await session.initialize()
            yield Conn(session, init, exchanges, http)


@asynccontextmanager
async def legacy(url: str, headers: dict[str, str]):
    exchanges = Exchanges()
    async with make_http_client(headers, exchanges) as http:
        async with legacy_session(url, headers, exchanges, http) as conn:
            yield conn


def text_of(result) -> str:
    parts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    return "".join(parts)


async def sc_initialize(url, headers, args) -> dict:
    async with legacy(url, headers) as c:
        out = {
            "protocol_version": c.init.protocol_version if SDK == 2 else c.init.protocolVersion,
            "server_name": c.init.server_info.name if SDK == 2 else c.init.serverInfo.name,
            "session_id": (c.exchanges.session_ids() or [None])[0],
            "has_tools_capability": (c.init.capabilities.tools is not None),
        }
    return out


async def sc_tools(url, headers, args) -> dict:
    async with legacy(url, headers) as c:
        tools = await c.session.list_tools()
    return {"tools": sorted(t.name for t in tools.tools)}


async def sc_echo(url, headers, args) -> dict:
    async with legacy(url, headers) as c:
        result = await c.session.call_tool(args.echo_tool, {"message": ECHO_MESSAGE})
    text = text_of(result)
    return {"text": text, "matches": text == ECHO_MESSAGE, "is_error": bool(result.is_error if SDK == 2 else result.isError)}


async def sc_add(url, headers, args) -> dict:
    async with legacy(url, headers) as c:
        result = await c.session.call_tool("add", {"a": 40, "b": 2})
    return {"text": text_of(result)}


async def sc_progress(url, headers, args) -> dict:
    """Counts every progress notification, in arrival order, and where the result lands."""
    events: list = []

    async def on_progress(progress, total, message) -> None:
        events.append({"progress": progress, "total": total, "message": message})

    async with legacy(url, headers) as c:
        if args.progress_tool == "progress":
            params = {"steps": args.steps}
        else:  # server-everything's long-running operation
            params = {"duration": args.steps * 0.1, "steps": args.steps}
        result = await c.session.call_tool(args.progress_tool, params, progress_callback=on_progress)
        events.append("result")
    values = [e["progress"] for e in events if isinstance(e, dict)]
    return {
        "count": len(values),
        "values": values,
        "in_order": values == sorted(values),
        "result_last": events[-1] == "result",
        "text": text_of(result),
    }


async def sc_big(url, headers, args) -> dict:
    async with legacy(url, headers) as c:
        result = await c.session.call_tool("big", {"size": args.big_size})
    text = text_of(result)
    expected = (PATTERN * (args.big_size // len(PATTERN) + 1))[: args.big_size]
    return {"size": len(text.encode()), "intact": text == expected}


async def sc_terminate(url, headers, args) -> dict:
    """Ends the session the SDK way (DELETE on close), then shows it is gone."""
    exchanges = Exchanges()
    async with make_http_client(headers, exchanges) as http:
        async with legacy_session(url, headers, exchanges, http) as c:
            await c.session.list_tools()
            session_id = (exchanges.session_ids() or [None])[0]
        deletes = [x["status"] for x in exchanges.items if x["method"] == "DELETE"]
        after = None
        if session_id:
            resp = await http.post(
                url,
                headers={
                    "content-type": "application/json",
                    "accept": "application/json, text/event-stream",
                    "mcp-session-id": session_id,
                    "mcp-protocol-version": "2025-11-25",
                },
                content=json.dumps({"jsonrpc": "2.0", "id": 99, "method": "tools/list"}),
            )
            after = resp.status_code
    return {"session_id": session_id, "delete_statuses": deletes, "status_after_delete": after}


async def sc_modern(url, headers, args) -> dict:
    """The 2.x high-level client in auto mode: negotiates 2026-07-28 when the server can."""
    if SDK != 2:
        return {"skipped": "needs the 2.x SDK"}
    from mcp import Client

    exchanges = Exchanges()
    http = make_http_client(headers, exchanges)
    async with http:
        transport = streamable_http_client(url, http_client=http, max_sse_event_size=None)
        async with Client(transport, mode=args.modern_mode) as client:
            version = client.protocol_version
            tools = await client.list_tools()
            result = await client.call_tool(args.echo_tool, {"message": ECHO_MESSAGE})
    posts = [x for x in exchanges.items if x["method"] == "POST"]
    return {
        "protocol_version": version,
        "tools": sorted(t.name for t in tools.tools),
        "text": text_of(result),
        "matches": text_of(result) == ECHO_MESSAGE,
        "mcp_methods": [x["req_mcp_method"] for x in posts],
        "mcp_names": [x["req_mcp_name"] for x in posts if x["req_mcp_name"]],
        "statuses": [x["status"] for x in posts],
        "session_ids": exchanges.session_ids(),
    }


HANDLERS = {
    "initialize": sc_initialize,
    "tools": sc_tools,
    "echo": sc_echo,
    "add": sc_add,
    "progress": sc_progress,
    "big": sc_big,
    "terminate": sc_terminate,
    "modern": sc_modern,
}


def parse_header(s: str) -> tuple[str, str]:
    name, sep, value = s.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"--header wants 'Name: value', got {s!r}")
    return name.strip(), value.strip()


async def run(args) -> int:
    headers = dict(args.header)
    failed = 0
    timeouts = 0
    for name in args.scenario:
        out = {"scenario": name, "sdk": SDK}
        started = time.monotonic()
        if timeouts >= args.max_timeouts:
            # A peer that stopped answering would cost a timeout per scenario.
            failed += 1
            out.update(ok=False, error=f"not run: {timeouts} earlier scenarios timed out", seconds=0.0)
            print(json.dumps(out), flush=True)
            continue
        try:
            with anyio.fail_after(args.timeout):
                out.update(await HANDLERS[name](args.url, headers, args))
            out["ok"] = True
        except BaseException as e:  # noqa: BLE001 - report every failure as data
            if isinstance(e, KeyboardInterrupt):
                raise
            failed += 1
            timeouts += isinstance(e, TimeoutError)
            out["ok"] = False
            out["error"] = f"{type(e).__name__}: {e}"
            out["trace"] = traceback.format_exc()[-2000:]
        out["seconds"] = round(time.monotonic() - started, 3)
        print(json.dumps(out), flush=True)
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--header", action="append", type=parse_header, default=[])
    p.add_argument("--scenario", action="append", choices=SCENARIOS + ["all"], required=True)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--big-size", type=int, default=2 * 1024 * 1024)
    p.add_argument("--echo-tool", default="echo")
    p.add_argument("--progress-tool", default="progress")
    p.add_argument("--modern-mode", default="auto")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per scenario")
    p.add_argument("--max-timeouts", type=int, default=2, help="stop running scenarios after this many timeouts")
    args = p.parse_args()
    if "all" in args.scenario:
        args.scenario = [s for s in SCENARIOS if s != "modern" or SDK == 2]
    return anyio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
