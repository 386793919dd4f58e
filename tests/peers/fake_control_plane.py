"""A fake tunnel control plane for agent conformance tests (stdlib HTTP server, threaded).

It serves ONE tunnel: `GET /v1/tunnels/{id}`, `GET /v1/tunnels/{id}/poll`,
`POST /v1/tunnels/{id}/response`. A test enqueues commands, the agent polls them,
forwards them to an MCP server and posts the answers here. Every request the agent
makes is recorded (method, path, query, headers, body) together with the problems
found in it: schema violations against tests/fixtures/openai-tunnel-openapi.json
(jsonschema) and violations of the header rules of the protocol. What this server
answers is validated against the same schema, so the fake cannot drift from the
contract either.

Python API (tests import it):

    cp = FakeControlPlane(); cp.start()
    rid = cp.enqueue_jsonrpc({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    final = cp.wait_final(rid, timeout=10)      # the final response POST body (dict)
    cp.posts_for(rid)                            # every response POST for that command, in order
    cp.requests                                  # every recorded request
    cp.problems()                                # all violations found so far
    cp.stop()

Admin HTTP API (for tests in other languages), under /_fake/:
    POST /_fake/commands        body: a command object (missing fields are filled in) → {"request_id": …}
    GET  /_fake/requests        → recorded requests (bodies as text)
    GET  /_fake/posts/{request_id}
    GET  /_fake/problems

Standalone: python fake_control_plane.py [--port 0] prints the tunnel id, the runtime
key and `listening on 127.0.0.1:PORT`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import secrets
import string
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = Path(__file__).resolve().parent.parent / "fixtures" / "openai-tunnel-openapi.json"
SPEC_URI = "urn:mcp-tunnel:openapi"
CHANNEL_RE = re.compile(r"^[a-z0-9_-]{1,64}$")
FINAL_TYPES = {"jsonrpc_response", "notify_ack", "session_termination_response"}
MAX_BODY = 64 * 1024 * 1024


def random_tunnel_id() -> str:
    alphabet = string.ascii_lowercase + string.digits
    return "tunnel_" + "".join(secrets.choice(alphabet) for _ in range(32))


class Spec:
    """The OpenAPI document as a jsonschema registry: validate(name, value) → list of problems."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        self.doc = json.loads(path.read_text())
        resource = Resource.from_contents(self.doc, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(SPEC_URI, resource)
        self._validators: dict[str, jsonschema.protocols.Validator] = {}

    def validator(self, ref: str):
        if ref not in self._validators:
            schema = {"$ref": f"{SPEC_URI}#{ref}"}
            self._validators[ref] = jsonschema.Draft202012Validator(schema, registry=self.registry)
        return self._validators[ref]

    def validate(self, ref: str, value) -> list[str]:
        return [f"{ref}: {e.json_path}: {e.message}" for e in self.validator(ref).iter_errors(value)]

    def schema(self, name: str) -> str:
        return f"/components/schemas/{name}"

    def operation(self, path_template: str, method: str) -> dict:
        return self.doc["paths"][path_template][method]

    def tunnel_failure_schema(self) -> dict:
        payload = self.doc["components"]["schemas"]["TunnelResponsePayload"]
        return payload["properties"]["resp_json"]["x-tunnel-failure-schema"]


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: list[tuple[str, str]]
    body: bytes
    at: float
    status: int = 0
    problems: list[str] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body.decode("utf-8", "replace"),
            "status": self.status,
            "problems": self.problems,
        }


@dataclass
class Pending:
    command: dict
    shard_token: str
    # Enqueued off-schema on purpose (e.g. an unknown command_type): the poll
    # answer carrying it is not self-validated.
    off_schema: bool = False
    delivered: bool = False
    done: bool = False
    posts: list[dict] = field(default_factory=list)


@dataclass
class Fault:
    """A scripted answer for the next `count` requests of one kind (metadata, poll, response)."""

    kind: str
    status: int
    body: bytes
    headers: dict[str, str]
    count: int


class FakeControlPlane:
    def __init__(
        self,
        tunnel_id: str | None = None,
        runtime_key: str | None = None,
        max_poll_wait: float = 2.0,
        spec: Spec | None = None,
    ) -> None:
        self.tunnel_id = tunnel_id or random_tunnel_id()
        self.runtime_key = runtime_key or "rk_test_" + secrets.token_hex(16)
        self.max_poll_wait = max_poll_wait
        self.spec = spec or Spec()
        self.requests: list[Recorded] = []
        self.pending: dict[str, Pending] = {}
        self.queue: list[str] = []
        self.faults: list[Fault] = []
        self.cond = threading.Condition()
        self.httpd: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self._counter = 0
        self._stopping = False

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, port: int = 0) -> "FakeControlPlane":
        plane = self

        class Handler(_Handler):
            cp = plane

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="fake-cp", daemon=True)
        self.thread.start()
        return self

    @property
    def port(self) -> int:
        assert self.httpd is not None
        return self.httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()

    def __enter__(self) -> "FakeControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- commands --------------------------------------------------------------------------
    def enqueue(self, command: dict) -> str:
        """Queues a command; request_id, shard_token, created_at, command_type, headers are filled in."""
        with self.cond:
            self._counter += 1
            cmd = dict(command)
            cmd.setdefault("request_id", f"req_{self._counter:04d}_{secrets.token_hex(4)}")
            cmd.setdefault("shard_token", f"shard:{secrets.token_hex(12)}")
            cmd.setdefault("command_type", "jsonrpc")
            cmd.setdefault("created_at", datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z"))
            cmd.setdefault("headers", {})
            problems = self.spec.validate(self.spec.schema("PolledCommandList"), {"commands": [cmd]})
            if problems and not command.get("_allow_invalid"):
                raise ValueError(f"command does not match the schema: {problems}")
            off_schema = bool(cmd.pop("_allow_invalid", False))
            rid = cmd["request_id"]
            self.pending[rid] = Pending(command=cmd, shard_token=cmd["shard_token"], off_schema=off_schema)
            self.queue.append(rid)
            self.cond.notify_all()
            return rid

    def enqueue_jsonrpc(
        self,
        message: dict,
        headers: dict[str, list[str]] | None = None,
        response_timeout: str | None = None,
        channel: str | None = None,
    ) -> str:
        cmd: dict = {"command_type": "jsonrpc", "jsonrpc": message, "headers": headers or {}}
        if response_timeout is not None:
            cmd["response_timeout"] = response_timeout
        if channel is not None:
            cmd["channel"] = channel
        return self.enqueue(cmd)

    def enqueue_session_termination(self, session_id: str) -> str:
        return self.enqueue({"command_type": "session_termination", "headers": {"Mcp-Session-Id": [session_id]}})

    def inject(self, kind: str, status: int, body: dict | None = None, headers: dict | None = None, count: int = 1):
        """The next `count` requests of `kind` (metadata|poll|response) get this answer instead."""
        if kind not in ("metadata", "poll", "response"):
            raise ValueError(kind)
        raw = json.dumps(body).encode() if body is not None else b""
        with self.cond:
            self.faults.append(Fault(kind, status, raw, dict(headers or {}), count))

    # ---- observations ----------------------------------------------------------------------
    def posts_for(self, request_id: str) -> list[dict]:
        with self.cond:
            p = self.pending.get(request_id)
            return list(p.posts) if p else []

    def wait_final(self, request_id: str, timeout: float = 15.0) -> dict:
        """The final response POST body for a command; raises TimeoutError."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                p = self.pending.get(request_id)
                if p is not None and p.done:
                    return p.posts[-1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no final response for {request_id} within {timeout}s")
                self.cond.wait(left)

    def wait_for(self, predicate, timeout: float = 15.0, what: str = "condition"):
        """Waits until predicate(self) is truthy (checked on every request); returns its value."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                value = predicate(self)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} not reached within {timeout}s")
                self.cond.wait(min(left, 0.2))

    def requests_of(self, kind: str) -> list[Recorded]:
        with self.cond:
            return [r for r in self.requests if _kind(r.path, self.tunnel_id) == kind]

    def problems(self) -> list[str]:
        with self.cond:
            return [f"{r.method} {r.path}: {p}" for r in self.requests for p in r.problems]

    # ---- request handling (called from handler threads) ------------------------------------
    def _record(self, rec: Recorded) -> None:
        with self.cond:
            self.requests.append(rec)
            self.cond.notify_all()

    def _take_fault(self, kind: str) -> Fault | None:
        with self.cond:
            for f in self.faults:
                if f.kind == kind and f.count > 0:
                    f.count -= 1
                    return f
        return None

    def _check_common(self, rec: Recorded, operation: dict) -> None:
        """Headers every control-plane request carries (protocol.md, 'Headers the agent sends')."""
        auth = rec.header_all("Authorization")
        if auth != [f"Bearer {self.runtime_key}"]:
            rec.problems.append("Authorization is not exactly one 'Bearer <runtime key>'")
        for name in ("X-Tunnel-Client-Name", "X-Tunnel-Client-Version", "User-Agent", "X-Tunnel-Client-Instance-Id"):
            values = rec.header_all(name)
            if len(values) != 1 or not values[0].strip():
                rec.problems.append(f"{name}: expected one non-empty value, got {values!r}")
        with self.cond:
            earlier = [r.header("X-Tunnel-Client-Instance-Id") for r in self.requests if r is not rec]
        mine = rec.header("X-Tunnel-Client-Instance-Id")
        if earlier and mine is not None and any(e != mine for e in earlier if e is not None):
            rec.problems.append("X-Tunnel-Client-Instance-Id changed between requests of one process")
        info = rec.header_all("X-Tunnel-MCP-Server-Info")
        if len(info) != 1:
            rec.problems.append(f"X-Tunnel-MCP-Server-Info: expected one value, got {len(info)}")
        else:
            rec.problems.extend(check_server_info(info[0]))
        # Header parameters the operation declares (types, maxLength, required).
        for param in operation.get("parameters", []):
            if param["in"] != "header":
                continue
            values = rec.header_all(param["name"])
            if not values:
                if param.get("required"):
                    rec.problems.append(f"missing required header {param['name']}")
                continue
            for v in values:
                errors = jsonschema.Draft202012Validator(param["schema"]).iter_errors(v)
                rec.problems.extend(f"header {param['name']}: {e.message}" for e in errors)

    def _check_query(self, rec: Recorded, operation: dict) -> None:
        declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "query"}
        for name, values in rec.query.items():
            if name == "channel":
                for v in values:
                    if not CHANNEL_RE.match(v):
                        rec.problems.append(f"query channel={v!r} is not canonical")
                continue
            if name not in declared:
                rec.problems.append(f"undeclared query parameter {name}")
                continue
            if len(values) != 1:
                rec.problems.append(f"query {name} repeated")
            for v in values:
                try:
                    value = int(v)
                except ValueError:
                    rec.problems.append(f"query {name}={v!r} is not an integer")
                    continue
                errors = jsonschema.Draft202012Validator(declared[name]["schema"]).iter_errors(value)
                rec.problems.extend(f"query {name}={v}: {e.message}" for e in errors)

    def handle(self, rec: Recorded) -> tuple[int, bytes, dict[str, str]]:
        kind = _kind(rec.path, self.tunnel_id)
        if kind == "admin":
            return self._admin(rec)
        self._record(rec)
        if kind is None:
            rec.problems.append("unknown path")
            return _error(404, "not_found", "unknown path")
        template, method = {
            "metadata": ("/v1/tunnels/{tunnel_id}", "get"),
            "poll": ("/v1/tunnels/{tunnel_id}/poll", "get"),
            "response": ("/v1/tunnels/{tunnel_id}/response", "post"),
        }[kind]
        if rec.method.lower() != method:
            rec.problems.append(f"method {rec.method} on {kind}")
            return _error(405, "method_not_allowed", "method not allowed")
        operation = self.spec.operation(template, method)
        self._check_common(rec, operation)
        self._check_query(rec, operation)
        if rec.header("Authorization") != f"Bearer {self.runtime_key}":
            return self._answer(rec, operation, *_error(401, "invalid_api_key", "bad runtime key"))
        fault = self._take_fault(kind)
        if fault is not None:
            headers = {"Content-Type": "application/json", **fault.headers} if fault.body else dict(fault.headers)
            return self._answer(rec, operation, fault.status, fault.body, headers)
        if kind == "metadata":
            body = {"id": self.tunnel_id, "name": "fake tunnel", "description": "fake control plane for tests"}
            return self._answer(rec, operation, 200, json.dumps(body).encode(), {"Content-Type": "application/json"})
        if kind == "poll":
            return self._poll(rec, operation)
        return self._response(rec, operation)

    def _answer(self, rec: Recorded, operation: dict, status: int, body: bytes, headers: dict[str, str]):
        """Validates what we answer against the declared response schema (guards the fake itself)."""
        declared = operation["responses"].get(str(status))
        content = (declared or {}).get("content")
        if content and body:
            ref = content["application/json"]["schema"]["$ref"].lstrip("#")
            problems = self.spec.validate(ref, json.loads(body))
            if problems:
                raise AssertionError(f"fake control plane answered off-schema: {problems}")
        rec.status = status
        return status, body, headers

    def _poll(self, rec: Recorded, operation: dict):
        try:
            limit = int(rec.query.get("limit", ["25"])[0])
        except ValueError:
            limit = 25
        try:
            wait_ms = int(rec.query.get("timeout_ms", ["30000"])[0])
        except ValueError:
            wait_ms = 30000
        limit = max(1, min(limit, 25))
        deadline = time.monotonic() + min(wait_ms / 1000.0, self.max_poll_wait)
        with self.cond:
            while not self.queue and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            ids = self.queue[:limit]
            del self.queue[:limit]
            commands = []
            off_schema = False
            for rid in ids:
                self.pending[rid].delivered = True
                commands.append(self.pending[rid].command)
                off_schema |= self.pending[rid].off_schema
        if not commands:
            rec.status = 204
            return 204, b"", {}
        body = json.dumps({"commands": commands}).encode()
        if off_schema:
            rec.status = 200
            return 200, body, {"Content-Type": "application/json"}
        return self._answer(rec, operation, 200, body, {"Content-Type": "application/json"})

    def _response(self, rec: Recorded, operation: dict):
        ctype = rec.header("Content-Type") or ""
        if not ctype.lower().startswith("application/json"):
            rec.problems.append(f"Content-Type {ctype!r} is not application/json")
        try:
            payload = json.loads(rec.body)
        except (ValueError, UnicodeDecodeError) as e:
            rec.problems.append(f"body is not JSON: {e}")
            return self._answer(rec, operation, *_error(400, "invalid_request_body", "not JSON"))
        schema_problems = self.spec.validate(self.spec.schema("TunnelResponsePayload"), payload)
        rec.problems.extend(schema_problems)
        if not isinstance(payload, dict) or schema_problems:
            return self._answer(rec, operation, *_error(400, "invalid_request_body", "schema"))
        rid = payload["request_id"]
        failure = _tunnel_failure(payload.get("resp_json"))
        if failure is not None:
            errors = jsonschema.Draft202012Validator(self.spec.tunnel_failure_schema()).iter_errors(failure)
            rec.problems.extend(f"tunnel_failure: {e.message}" for e in errors)
        with self.cond:
            pending = self.pending.get(rid)
            if pending is None or pending.done or not pending.delivered:
                return self._answer(rec, operation, *_error(404, "pending_request_not_found", "unknown request"))
            token = rec.header_all("X-Tunnel-Shard-Token")
            if token != [pending.shard_token]:
                rec.problems.append("X-Tunnel-Shard-Token missing or not the command's shard token")
            if pending.shard_token.encode() in rec.body:
                rec.problems.append("the shard token appears in the response body")
            expected_channel = pending.command.get("channel", "main")
            if payload.get("channel") not in (None, expected_channel):
                rec.problems.append(f"channel {payload.get('channel')!r} differs from the command's")
            pending.posts.append(payload)
            if payload.get("resp_type", "jsonrpc_response") in FINAL_TYPES:
                pending.done = True
            self.cond.notify_all()
        return self._answer(rec, operation, 200, b'{"status":"ok"}', {"Content-Type": "application/json"})

    def _admin(self, rec: Recorded):
        parts = rec.path.split("/")[2:]
        if rec.method == "POST" and parts == ["commands"]:
            try:
                rid = self.enqueue(json.loads(rec.body))
            except (ValueError, TypeError) as e:
                return _error(400, "bad_command", str(e))
            return 200, json.dumps({"request_id": rid}).encode(), {"Content-Type": "application/json"}
        if rec.method == "GET" and parts == ["requests"]:
            with self.cond:
                out = [r.to_dict() for r in self.requests]
            return 200, json.dumps(out).encode(), {"Content-Type": "application/json"}
        if rec.method == "GET" and len(parts) == 2 and parts[0] == "posts":
            return 200, json.dumps(self.posts_for(parts[1])).encode(), {"Content-Type": "application/json"}
        if rec.method == "GET" and parts == ["problems"]:
            return 200, json.dumps(self.problems()).encode(), {"Content-Type": "application/json"}
        return _error(404, "not_found", "unknown admin path")


def check_server_info(value: str) -> list[str]:
    """X-Tunnel-MCP-Server-Info: compact JSON v1 declaration (protocol.md)."""
    problems = []
    if len(value.encode()) > 4096:
        problems.append("X-Tunnel-MCP-Server-Info longer than 4096 bytes")
    try:
        doc = json.loads(value)
    except ValueError:
        return ["X-Tunnel-MCP-Server-Info is not JSON"]
    if json.dumps(doc, separators=(",", ":"), ensure_ascii=False) != value:
        problems.append("X-Tunnel-MCP-Server-Info is not compact JSON")
    if not isinstance(doc, dict) or set(doc) != {"version", "channels"} or doc.get("version") != 1:
        return problems + ["X-Tunnel-MCP-Server-Info must be exactly {version:1, channels:[…]}"]
    channels = doc["channels"]
    if not isinstance(channels, list) or not 1 <= len(channels) <= 32:
        return problems + ["X-Tunnel-MCP-Server-Info channels: 1..32 entries"]
    names = []
    for ch in channels:
        if not isinstance(ch, dict) or not set(ch) <= {"name", "proc_affinity"} or "name" not in ch:
            problems.append(f"X-Tunnel-MCP-Server-Info channel {ch!r}: only name and proc_affinity")
            continue
        if not isinstance(ch["name"], str) or not CHANNEL_RE.match(ch["name"]):
            problems.append(f"X-Tunnel-MCP-Server-Info channel name {ch['name']!r} not canonical")
        if "proc_affinity" in ch and ch["proc_affinity"] is not True:
            problems.append("X-Tunnel-MCP-Server-Info proc_affinity present but not true")
        names.append(ch.get("name"))
    if len(names) != len(set(names)):
        problems.append("X-Tunnel-MCP-Server-Info channel names not unique")
    return problems


def _tunnel_failure(resp_json):
    if not isinstance(resp_json, dict):
        return None
    err = resp_json.get("error")
    if not isinstance(err, dict) or not isinstance(err.get("data"), dict):
        return None
    return err["data"].get("tunnel_failure")


def _kind(path: str, tunnel_id: str) -> str | None:
    if path.startswith("/_fake/"):
        return "admin"
    base = f"/v1/tunnels/{tunnel_id}"
    return {base: "metadata", base + "/poll": "poll", base + "/response": "response"}.get(path)


def _error(status: int, code: str, message: str) -> tuple[int, bytes, dict[str, str]]:
    # APIErrorBody requires `type` (the OpenAI error category) next to message and code.
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    return status, body, {"Content-Type": "application/json"}


class _Handler(BaseHTTPRequestHandler):
    cp: FakeControlPlane
    protocol_version = "HTTP/1.1"  # keep-alive, as the agent's client pools connections

    def log_message(self, fmt, *args) -> None:  # quiet: the recorded requests are the log
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("body too large")
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        try:
            body = self._read_body()
        except ValueError:
            self.send_error(413)
            return
        rec = Recorded(
            method=self.command,
            path=url.path,
            query=urllib.parse.parse_qs(url.query, keep_blank_values=True),
            headers=list(self.headers.items()),
            body=body,
            at=time.monotonic(),
        )
        try:
            status, payload, headers = self.cp.handle(rec)
        except Exception as e:  # noqa: BLE001 - a bug in the fake must fail the test, not hang it
            rec.problems.append(f"fake control plane internal error: {type(e).__name__}: {e}")
            if rec not in self.cp.requests:
                self.cp._record(rec)
            status, payload, headers = _error(500, "fake_internal_error", "fake control plane bug")
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if payload and status != 204:
            self.wfile.write(payload)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve
    do_PUT = _serve


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tunnel-id")
    p.add_argument("--runtime-key")
    args = p.parse_args()
    cp = FakeControlPlane(tunnel_id=args.tunnel_id, runtime_key=args.runtime_key).start(args.port)
    print(json.dumps({"tunnel_id": cp.tunnel_id, "runtime_key": cp.runtime_key}), flush=True)
    print(f"listening on 127.0.0.1:{cp.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        cp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
