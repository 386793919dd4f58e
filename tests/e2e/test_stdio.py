"""stdio MCP servers and several channels on one tunnel, end to end.

One relay, one agent serving four channels of one tunnel:
  py2         the Python SDK 2.x server over stdio (tests/peers/py_stdio_server.py)
  py1         the same with SDK 1.x
  everything  `mcp-server-everything stdio` (stderr banner; a notification
              before the initialize answer)
  web         the Python SDK 2.x server over Streamable HTTP
Real MCP clients (Python SDK 2.x and 1.x, TypeScript SDK) call
`/v1/mcp/{tunnel}/{channel}` on the relay.
"""

from __future__ import annotations

import json
import shlex
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import (
    NODE_PEERS,
    PEERS,
    READY_TIMEOUT,
    RUNTIME_KEY_ENV,
    VENV1,
    VENV2,
    NotBuiltYet,
    Proc,
    Relay,
    agent_must_run,
    not_built,
    run_client,
)

ECHO_MESSAGE = 'hello through the tunnel: ünïcødé ✓ "quotes" \\ back'
STEPS = 5
BIG = 2 * 1024 * 1024
LEGACY = "2025-11-25"
SCENARIO_TIMEOUT = 20
EVERYTHING_JS = NODE_PEERS / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"

CHANNELS = {
    "py2": {"server_name": "py-stdio-sdk2", "tools": {"echo", "add", "progress", "big", "pid"},
            "echo": ECHO_MESSAGE, "progress_tool": "progress", "big": True},
    "py1": {"server_name": "py-stdio-sdk1", "tools": {"echo", "add", "progress", "big", "pid"},
            "echo": ECHO_MESSAGE, "progress_tool": "progress", "big": True},
    "everything": {"server_name": "mcp-servers/everything", "tools": {"echo", "trigger-long-running-operation"},
                   "echo": "Echo: " + ECHO_MESSAGE, "progress_tool": "trigger-long-running-operation", "big": False},
    "web": {"server_name": "py-server-sdk2-default", "tools": {"echo", "add", "progress", "big"},
            "echo": ECHO_MESSAGE, "progress_tool": "progress", "big": True},
}
CLIENTS = ["py2", "py1", "ts"]


def command(*argv) -> str:
    # Our agent splits the command itself (no shell): POSIX quoting is what it reads.
    return " ".join(shlex.quote(str(a)) for a in argv)


class StdioTunnel:
    def __init__(self, binary: Path, web_url: str):
        self.tmp = Path(tempfile.mkdtemp(prefix="mcp-tunnel-e2e-stdio-"))
        self.relay = Relay(binary, self.tmp / "relay")
        self.binary = binary
        self.web_url = web_url
        self.agent = self.start_agent("agent-stdio")
        agent_must_run(self.agent)
        for channel in CHANNELS:
            self.wait_connected(channel)

    def start_agent(self, name: str) -> Proc:
        return Proc(
            name,
            [
                self.binary, "agent",
                "--control-plane.base-url", self.relay.base_url,
                "--control-plane.tunnel-id", self.relay.tunnel_id,
                "--control-plane.api-key", f"env:{RUNTIME_KEY_ENV}",
                "--mcp.command", "channel=py2,command=" + command(VENV2, PEERS / "py_stdio_server.py"),
                "--mcp.command", "channel=py1,command=" + command(VENV1, PEERS / "py_stdio_server.py"),
                "--mcp.command", "channel=everything,command=" + command("node", EVERYTHING_JS, "stdio"),
                "--mcp.server-url", f"channel=web,url={self.web_url}",
                "--health.listen-addr", "off",
                "--log.level", "debug",
            ],
            env={RUNTIME_KEY_ENV: self.relay.runtime_key},
        )

    def url(self, channel: str) -> str:
        return f"{self.relay.mcp_url}/{channel}"

    def raw(self, method: str, channel: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, str]:
        h = {"Authorization": f"Bearer {self.relay.connector_key}", **headers}
        req = urllib.request.Request(self.url(channel), data=body, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def wait_connected(self, channel: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        body = json.dumps({"jsonrpc": "2.0", "id": "e2e-ready", "method": "ping"}).encode()
        last = None
        while time.monotonic() < deadline:
            if not self.agent.alive():
                raise RuntimeError(f"agent exited:\n{self.agent.output()[-4000:]}")
            status, text = self.raw("POST", channel, body, {
                "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
            last = f"{status} {text[:200]}"
            # Crossed the tunnel and reached a running server (its opinion of a
            # bare ping does not matter); a stdio child still starting is
            # transport_closed.
            if status != 503 and "transport_closed" not in text:
                return
            time.sleep(0.2)
        raise RuntimeError(f"channel {channel} not reachable within {READY_TIMEOUT}s (last: {last})")

    def close(self) -> None:
        self.agent.stop(grace=10.0)
        self.relay.proc.stop()


@pytest.fixture(scope="module")
def stdio_tunnel(binary, servers):
    if not EVERYTHING_JS.exists():
        pytest.fail(f"{EVERYTHING_JS} missing: run scripts/test-deps.sh")
    web = servers.get("py2-default")
    try:
        t = StdioTunnel(binary, web.url)
    except NotBuiltYet as e:
        not_built(str(e))
    yield t
    t.close()


class Runs:
    def __init__(self, tunnel: StdioTunnel):
        self.tunnel = tunnel
        self.cache: dict[tuple[str, str], dict[str, dict]] = {}

    def get(self, channel: str, client: str) -> dict[str, dict]:
        key = (channel, client)
        if key not in self.cache:
            self.cache[key] = run_scenarios(self.tunnel, channel, client, scenarios_for(channel))
        return self.cache[key]


def scenarios_for(channel: str) -> list[str]:
    out = ["initialize", "tools", "echo", "progress"]
    if CHANNELS[channel]["big"]:
        out.append("big")
    return out


def run_scenarios(tunnel: StdioTunnel, channel: str, client: str, scenarios: list[str]) -> dict[str, dict]:
    facts = CHANNELS[channel]
    common = [
        "--steps", str(STEPS),
        "--big-size", str(BIG),
        "--progress-tool", facts["progress_tool"],
        "--timeout", str(SCENARIO_TIMEOUT),
        "--header", f"Authorization: Bearer {tunnel.relay.connector_key}",
    ]
    for s in scenarios:
        common += ["--scenario", s]
    url = tunnel.url(channel)
    if client == "ts":
        argv = ["node", NODE_PEERS / "ts_client.mjs", url, *common]
    else:
        argv = [VENV2 if client == "py2" else VENV1, PEERS / "py_client.py", url, *common]
    results, log = run_client(f"client-{client}-stdio-{channel}", argv)
    by_name = {r["scenario"]: r for r in results}
    missing = [s for s in scenarios if s not in by_name]
    if missing:
        raise AssertionError(f"client printed no result for {missing}:\n{log[-4000:]}")
    return by_name


@pytest.fixture(scope="module")
def runs(stdio_tunnel) -> Runs:
    return Runs(stdio_tunnel)


def ok(r: dict) -> dict:
    assert r["ok"], f"{r['scenario']} failed in the client: {r.get('error')}\n{r.get('trace', '')}"
    return r


STDIO = ["py2", "py1", "everything"]
MATRIX = [pytest.param(ch, cl, id=f"{ch}-{cl}client") for ch in STDIO for cl in CLIENTS]


@pytest.mark.parametrize("channel,client", MATRIX)
def test_initialize(runs, channel, client):
    r = ok(runs.get(channel, client)["initialize"])
    assert r["protocol_version"] == LEGACY
    assert r["server_name"] == CHANNELS[channel]["server_name"]
    assert r["has_tools_capability"] is True


@pytest.mark.parametrize("channel,client", MATRIX)
def test_tools_list(runs, channel, client):
    r = ok(runs.get(channel, client)["tools"])
    assert CHANNELS[channel]["tools"] <= set(r["tools"])


@pytest.mark.parametrize("channel,client", MATRIX)
def test_echo(runs, channel, client):
    r = ok(runs.get(channel, client)["echo"])
    assert r["text"] == CHANNELS[channel]["echo"]


@pytest.mark.parametrize("channel,client", MATRIX)
def test_progress(runs, channel, client):
    r = ok(runs.get(channel, client)["progress"])
    assert r["result_last"] is True
    assert r["in_order"] is True
    if client != "ts":
        # Python clients receive every notification; the TS SDK may drop one
        # that shares a read with the final answer (mcp-peers.md).
        assert r["count"] == STEPS, r


@pytest.mark.parametrize("channel,client", [p for p in MATRIX if CHANNELS[p.values[0]]["big"]])
def test_big_result(runs, channel, client):
    r = ok(runs.get(channel, client)["big"])
    assert r["size"] == BIG and r["intact"] is True


def test_http_and_stdio_channels_in_parallel(stdio_tunnel):
    """One HTTP and one stdio channel of the same tunnel, called at the same time."""
    out: dict[str, dict[str, dict]] = {}

    def go(channel: str) -> None:
        out[channel] = run_scenarios(stdio_tunnel, channel, "py2", ["progress", "echo"])

    threads = [threading.Thread(target=go, args=(c,)) for c in ("web", "py2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for channel in ("web", "py2"):
        assert channel in out, f"{channel} did not finish"
        assert ok(out[channel]["progress"])["count"] == STEPS
        assert ok(out[channel]["echo"])["text"] == ECHO_MESSAGE


def test_session_delete_on_stdio_is_405_and_the_server_keeps_serving(stdio_tunnel):
    status, _ = stdio_tunnel.raw("DELETE", "py2", None, {"Mcp-Session-Id": "no-such-session"})
    assert status == 405
    r = ok(run_scenarios(stdio_tunnel, "py2", "py2", ["echo"])["echo"])
    assert r["text"] == ECHO_MESSAGE


def test_server_everything_banner_goes_to_the_agent_log(stdio_tunnel, runs):
    ok(runs.get("everything", "py2")["initialize"])
    log = stdio_tunnel.agent.output()
    assert "channel everything: stderr:" in log
    # Its list_changed notification comes before any request (or before the
    # initialize answer) and never breaks the exchange; stdout carries no banner.
    assert "non-JSON-RPC line on stdout" not in log


def test_unknown_channel_is_not_connected_at_the_relay(stdio_tunnel):
    # The agent declares and polls only its four channels, so the relay knows
    # nobody serves `nope` and says so instead of queueing.
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping"}).encode()
    status, text = stdio_tunnel.raw("POST", "nope", body, {
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    assert status == 503 and "tunnel_client_not_connected" in text


def test_two_agents_keep_a_stdio_channel_on_one_process(stdio_tunnel):
    """A second agent polls the same tunnel with the same channels: the relay
    keeps the stdio channel's work on the agent that took it first
    (proc_affinity), so every call reaches the same server process."""
    second = stdio_tunnel.start_agent("agent-stdio-2")
    try:
        agent_must_run(second)
        time.sleep(1.5)  # let the second agent's polls reach the relay
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": LEGACY, "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}}
        status, text = stdio_tunnel.raw("POST", "py2", json.dumps(init).encode(), headers)
        assert status == 200, text
        pids = set()
        for i in range(8):
            call = {"jsonrpc": "2.0", "id": 10 + i, "method": "tools/call", "params": {"name": "pid", "arguments": {}}}
            status, text = stdio_tunnel.raw("POST", "py2", json.dumps(call).encode(), headers)
            assert status == 200, text
            msg = json.loads(text)
            pids.add("".join(c["text"] for c in msg["result"]["content"]))
        assert len(pids) == 1, f"calls reached several server processes: {pids}"
        # The HTTP channel has no affinity: both agents serve it.
        r = ok(run_scenarios(stdio_tunnel, "web", "py2", ["echo"])["echo"])
        assert r["text"] == ECHO_MESSAGE
    finally:
        second.stop(grace=10.0)
