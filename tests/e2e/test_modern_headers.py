"""A hand-made 2026-07-28 request (no initialize, no session; MCP-Protocol-Version,
Mcp-Method and Mcp-Name headers) against the Python SDK 2.x server, directly and
through relay + agent. The server checks the headers against the body, so a header
lost or altered on the way shows up as its 400 / -32020."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

MODERN = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "e2e-raw", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def post(url: str, body: dict, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers},
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            status, raw, ctype = resp.status, resp.read(), resp.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        # The final message is the last `data:` event.
        data = [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]
        raw = [d for d in data if d][-1].encode()
    return status, json.loads(raw)


def endpoint(route: str, servers, tunnels) -> tuple[str, dict[str, str]]:
    if route == "direct":
        return servers.get("py2-default").url, {}
    t = tunnels.get("py2-default")
    return t.url, {"Authorization": f"Bearer {t.relay.connector_key}"}


def call(rid, name_header: str, message: str = "raw modern") -> tuple[dict, dict]:
    body = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": message}, "_meta": META},
    }
    headers = {"MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": name_header}
    return body, headers


@pytest.mark.parametrize("route", ["direct", "tunnel"])
def test_modern_call_with_matching_headers(route, servers, tunnels):
    url, auth = endpoint(route, servers, tunnels)
    body, headers = call("raw-1", "echo")
    status, answer = post(url, body, {**auth, **headers})
    assert status == 200, answer
    assert answer["id"] == "raw-1"
    assert answer["result"]["content"][0]["text"] == "raw modern"


@pytest.mark.parametrize("route", ["direct", "tunnel"])
def test_modern_call_with_mismatched_name_is_the_servers_400(route, servers, tunnels):
    url, auth = endpoint(route, servers, tunnels)
    body, headers = call(7, "add")
    status, answer = post(url, body, {**auth, **headers})
    assert status == 400
    assert answer["id"] == 7 and answer["error"]["code"] == -32020
