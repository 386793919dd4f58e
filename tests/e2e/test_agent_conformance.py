"""Our agent against a fake control plane (tests/peers/fake_control_plane.py), forwarding
to a real Python SDK MCP server. Independent of our relay: every request the agent
makes is checked against the OpenAPI description and the header rules of protocol.md.
"""

from __future__ import annotations

import json
import socket

import pytest

MODERN = "2026-07-28"
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}},
}


def header(resp_headers: dict, name: str) -> list[str]:
    for k, v in (resp_headers or {}).items():
        if k.lower() == name.lower():
            return v
    return []


def modern_call(tool: str, args: dict, rid, name_header: str | None = None) -> tuple[dict, dict]:
    message = {
        "jsonrpc": "2.0",
        "id": rid,
        "method": "tools/call",
        "params": {"name": tool, "arguments": args, "_meta": MODERN_META},
    }
    headers = {
        "MCP-Protocol-Version": [MODERN],
        "Mcp-Method": ["tools/call"],
        "Mcp-Name": [name_header or tool],
    }
    return message, headers


def assert_conformant(cp) -> None:
    problems = cp.problems()
    assert problems == [], "agent requests off the contract:\n" + "\n".join(problems)
    polls = cp.requests_of("poll")
    assert polls, "the agent never polled"
    for p in polls:
        limits = p.query.get("limit")
        assert limits and 1 <= int(limits[0]) <= 25, f"poll limit {limits}"
    ids = {r.header("X-Tunnel-Client-Instance-Id") for r in cp.requests}
    assert len(ids) == 1 and None not in ids, f"instance ids seen: {ids}"


@pytest.fixture
def py_server(servers):
    return servers.get("py2-default")


def test_session_lifecycle_conforms(fake_cp, agent_on_fake, py_server):
    """initialize → initialized → progress call → big ids → session termination, all on the contract."""
    agent_on_fake(py_server.url)
    cp = fake_cp

    rid = cp.enqueue_jsonrpc(INIT)
    final = cp.wait_final(rid)
    assert final["resp_code"] == 200 and final.get("resp_type", "jsonrpc_response") == "jsonrpc_response"
    assert final["resp_json"]["id"] == 1 and final["resp_json"]["result"]["protocolVersion"] == "2025-11-25"
    session = header(final.get("resp_headers"), "Mcp-Session-Id")
    assert len(session) == 1, f"Mcp-Session-Id not in resp_headers: {final.get('resp_headers')}"
    sid = {"Mcp-Session-Id": session, "MCP-Protocol-Version": ["2025-11-25"]}

    rid = cp.enqueue_jsonrpc({"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=sid)
    final = cp.wait_final(rid)
    assert final["resp_type"] == "notify_ack" and final["resp_code"] == 202
    assert final.get("resp_json") is None

    call = {
        "jsonrpc": "2.0",
        "id": "call-ü-1",
        "method": "tools/call",
        "params": {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "tok-1"}},
    }
    rid = cp.enqueue_jsonrpc(call, headers=sid)
    final = cp.wait_final(rid)
    posts = cp.posts_for(rid)
    notifies = [p for p in posts if p.get("resp_type") == "jsonrpc_notify"]
    assert [p["resp_json"]["params"]["progress"] for p in notifies] == [1, 2, 3]
    assert all(p["resp_json"]["params"]["progressToken"] == "tok-1" for p in notifies)
    assert posts[-1] is final and posts[:-1] == notifies, "notifications must all precede the one final post"
    assert final["resp_json"]["id"] == "call-ü-1"
    assert final["resp_json"]["result"]["content"][0]["text"] == "done 3"

    big_id = 12345678901234567890123
    rid = cp.enqueue_jsonrpc({"jsonrpc": "2.0", "id": big_id, "method": "tools/list"}, headers=sid)
    final = cp.wait_final(rid)
    assert final["resp_json"]["id"] == big_id, "the id must pass through byte for byte"
    raw = [r.body for r in cp.requests_of("response") if rid.encode() in r.body][-1]
    assert str(big_id).encode() in raw

    rid = cp.enqueue_session_termination(session[0])
    final = cp.wait_final(rid)
    assert final["resp_type"] == "session_termination_response"
    assert final["resp_code"] in (200, 204)
    assert final.get("resp_json") is None

    assert_conformant(cp)


def test_modern_request_headers_reach_the_server(fake_cp, agent_on_fake, py_server):
    """2026-07-28: Mcp-Method/Mcp-Name travel to the server, which checks them against the body."""
    agent_on_fake(py_server.url)
    cp = fake_cp

    message, headers = modern_call("echo", {"message": "hi"}, "m-1")
    final = cp.wait_final(cp.enqueue_jsonrpc(message, headers=headers))
    assert final["resp_code"] == 200, final
    assert final["resp_json"]["result"]["content"][0]["text"] == "hi"

    message, headers = modern_call("echo", {"message": "hi"}, "m-2", name_header="add")
    final = cp.wait_final(cp.enqueue_jsonrpc(message, headers=headers))
    # The server's own JSON-RPC error with the same id is kept verbatim, with its status.
    assert final["resp_code"] == 400
    assert final["resp_json"]["id"] == "m-2" and final["resp_json"]["error"]["code"] == -32020

    assert_conformant(cp)


def test_unknown_command_type_is_skipped(fake_cp, agent_on_fake, py_server):
    agent_on_fake(py_server.url)
    cp = fake_cp
    unknown = cp.enqueue({"command_type": "from_the_future", "payload": {"x": 1}, "_allow_invalid": True})
    message, headers = modern_call("echo", {"message": "after"}, "m-3")
    final = cp.wait_final(cp.enqueue_jsonrpc(message, headers=headers))
    assert final["resp_json"]["result"]["content"][0]["text"] == "after"
    assert cp.posts_for(unknown) == []
    assert_conformant(cp)


def test_expired_command_is_dropped(fake_cp, agent_on_fake, py_server):
    """response_timeout 0s is already expired: no MCP work, no post, polling goes on."""
    agent_on_fake(py_server.url)
    cp = fake_cp
    message, headers = modern_call("echo", {"message": "late"}, "m-4")
    expired = cp.enqueue_jsonrpc(message, headers=headers, response_timeout="0s")
    message, headers = modern_call("echo", {"message": "on time"}, "m-5")
    final = cp.wait_final(cp.enqueue_jsonrpc(message, headers=headers, response_timeout="30s"))
    assert final["resp_json"]["result"]["content"][0]["text"] == "on time"
    assert cp.posts_for(expired) == []
    assert_conformant(cp)


def test_unreachable_server_gives_synthesized_failure(fake_cp, agent_on_fake):
    """Nothing listens at the MCP URL: -32603 with tunnel_failure source=connect, 502."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The port is free again now; nothing listens there.
    agent_on_fake(f"http://127.0.0.1:{port}/mcp")
    cp = fake_cp
    message, headers = modern_call("echo", {"message": "x"}, 7)
    final = cp.wait_final(cp.enqueue_jsonrpc(message, headers=headers))
    assert final["resp_code"] == 502
    err = final["resp_json"]["error"]
    assert final["resp_json"]["id"] == 7 and err["code"] == -32603
    failure = err["data"]["tunnel_failure"]
    assert failure["source"] == "connect" and failure["upstream_response_received"] is False
    assert "127.0.0.1" not in json.dumps(final), "no target URL in a synthesized failure"
    assert_conformant(cp)
