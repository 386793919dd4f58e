"""The fake control plane's own checks: a checker that never complains proves nothing,
so here it is fed a conformant client and then each kind of violation."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from fake_control_plane import check_server_info

SERVER_INFO = '{"version":1,"channels":[{"name":"main"}]}'


class Client:
    """A minimal hand-written agent: exactly the headers protocol.md asks for."""

    def __init__(self, cp, **overrides):
        self.cp = cp
        self.headers = {
            "Authorization": f"Bearer {cp.runtime_key}",
            "X-Tunnel-Client-Name": "e2e-test",
            "X-Tunnel-Client-Version": "0",
            "User-Agent": "e2e-test/0",
            "X-Tunnel-Client-Instance-Id": "instance-1",
            "X-Tunnel-MCP-Server-Info": SERVER_INFO,
        }
        self.headers.update(overrides)

    def call(self, method, suffix, body=None, **extra):
        url = f"{self.cp.base_url}/v1/tunnels/{self.cp.tunnel_id}{suffix}"
        headers = {k: v for k, v in {**self.headers, **extra}.items() if v is not None}
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def poll(self, query="?limit=5&timeout_ms=200", **extra):
        return self.call("GET", "/poll" + query, **extra)

    def respond(self, payload: dict, shard: str | None, **extra):
        body = json.dumps(payload).encode()
        return self.call(
            "POST", "/response", body, **{"Content-Type": "application/json", "X-Tunnel-Shard-Token": shard}, **extra
        )


def ok_payload(rid: str) -> dict:
    return {
        "request_id": rid,
        "channel": "main",
        "resp_json": {"jsonrpc": "2.0", "id": 1, "result": {}},
        "resp_headers": {"Content-Type": ["application/json"]},
        "resp_code": 200,
        "resp_type": "jsonrpc_response",
    }


def test_conformant_client_has_no_problems(fake_cp):
    c = Client(fake_cp)
    assert c.call("GET", "")[0] == 200
    assert c.poll()[0] == 204
    rid = fake_cp.enqueue_jsonrpc({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    status, body = c.poll()
    assert status == 200
    cmd = json.loads(body)["commands"][0]
    assert cmd["request_id"] == rid and cmd["shard_token"]
    notify = {**ok_payload(rid), "resp_type": "jsonrpc_notify", "resp_json": {"jsonrpc": "2.0", "method": "n"}}
    assert c.respond(notify, cmd["shard_token"])[0] == 200
    assert c.respond(ok_payload(rid), cmd["shard_token"])[0] == 200
    assert fake_cp.wait_final(rid, 1)["resp_code"] == 200
    assert [p["resp_type"] for p in fake_cp.posts_for(rid)] == ["jsonrpc_notify", "jsonrpc_response"]
    # A replay after the final answer is 404, as the real service answers.
    assert c.respond(ok_payload(rid), cmd["shard_token"])[0] == 404
    assert fake_cp.problems() == []


def test_limit_and_query_violations_are_found(fake_cp):
    c = Client(fake_cp)
    c.poll("?limit=26&timeout_ms=100")
    c.poll("?limit=0&timeout_ms=100")
    c.poll("?limit=5&timeout_ms=100&shard_token=x")
    problems = "\n".join(fake_cp.problems())
    assert "limit=26" in problems and "limit=0" in problems
    assert "undeclared query parameter shard_token" in problems


@pytest.mark.parametrize(
    "override,expected",
    [
        ({"Authorization": "Bearer wrong"}, "Authorization"),
        ({"X-Tunnel-Client-Instance-Id": None}, "X-Tunnel-Client-Instance-Id"),
        ({"X-Tunnel-MCP-Server-Info": '{"version": 1, "channels": [{"name": "main"}]}'}, "not compact"),
        ({"X-Tunnel-MCP-Server-Info": None}, "X-Tunnel-MCP-Server-Info"),
        ({"X-Tunnel-Client-Name": None}, "X-Tunnel-Client-Name"),
    ],
)
def test_header_violations_are_found(fake_cp, override, expected):
    Client(fake_cp, **override).poll()
    assert any(expected in p for p in fake_cp.problems()), fake_cp.problems()


def test_instance_id_change_is_found(fake_cp):
    Client(fake_cp).poll()
    Client(fake_cp, **{"X-Tunnel-Client-Instance-Id": "instance-2"}).poll()
    assert any("changed between requests" in p for p in fake_cp.problems())


def test_response_violations_are_found(fake_cp):
    c = Client(fake_cp)
    rid = fake_cp.enqueue_jsonrpc({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    cmd = json.loads(c.poll()[1])["commands"][0]
    shard = cmd["shard_token"]
    # Shard token in the body instead of the header (off-schema and a protocol violation).
    assert c.respond({**ok_payload(rid), "shard_token": shard}, None)[0] == 400
    # Wrong shard token in the header.
    c.respond({**ok_payload(rid), "resp_type": "jsonrpc_notify"}, "not-the-token")
    # A synthesized failure that contradicts the tunnel_failure schema.
    bad_failure = {
        **ok_payload(rid),
        "resp_code": 502,
        "resp_json": {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {
                "code": -32603,
                "message": "Bad Gateway",
                "data": {"tunnel_failure": {"version": 1, "source": "target_http", "upstream_response_received": True}},
            },
        },
    }
    c.respond(bad_failure, shard)
    problems = "\n".join(fake_cp.problems())
    assert "missing required header X-Tunnel-Shard-Token" in problems
    assert "'shard_token' was unexpected" in problems
    assert "not the command's shard token" in problems
    assert "tunnel_failure: 'upstream_status' is a required property" in problems


def test_injected_faults_answer_first(fake_cp):
    c = Client(fake_cp)
    fake_cp.inject(
        "poll", 503, {"error": {"message": "busy", "type": "server_error", "code": "tunnel_queue_full"}}, count=2
    )
    assert [c.poll()[0] for _ in range(3)] == [503, 503, 204]


@pytest.mark.parametrize(
    "value,ok",
    [
        ('{"version":1,"channels":[{"name":"main"}]}', True),
        ('{"version":1,"channels":[{"name":"main","proc_affinity":true},{"name":"b_2"}]}', True),
        ('{"version":1,"channels":[{"name":"main","proc_affinity":false}]}', False),
        ('{"version":1,"channels":[{"name":"Main"}]}', False),
        ('{"version":1,"channels":[{"name":"a"},{"name":"a"}]}', False),
        ('{"version":1,"channels":[{"name":"a","url":"http://x"}]}', False),
        ('{"version":2,"channels":[{"name":"a"}]}', False),
        ("not json", False),
    ],
)
def test_server_info_checker(value, ok):
    assert (check_server_info(value) == []) is ok
