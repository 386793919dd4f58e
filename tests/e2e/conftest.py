"""End-to-end harness: real MCP peers on both ends of our relay and agent.

Everything binds 127.0.0.1 with free ports. Every process started here is killed at
teardown; its stdout/stderr go to target/e2e-logs/<run>/<name>.log, and the new
part of each log is attached to the report of a failing test.

A component that is not built yet (a colleague's branch not merged: the binary
says "not built yet", or the CLI stub exits at once without doing anything) makes
the tests that need it skip with that reason. Set E2E_REQUIRE_ALL=1 to turn those
skips into failures once everything is merged.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / "peers"
NODE_PEERS = PEERS / "node"
VENV2 = ROOT / ".cache" / "venv-mcp2" / "bin" / "python"
VENV1 = ROOT / ".cache" / "venv-mcp1" / "bin" / "python"
LOG_ROOT = ROOT / "target" / "e2e-logs"
READY_TIMEOUT = 20.0
REQUIRE_ALL = os.environ.get("E2E_REQUIRE_ALL") == "1"

sys.path.insert(0, str(PEERS))

from fake_control_plane import FakeControlPlane  # noqa: E402


class NotBuiltYet(Exception):
    """A component of the tunnel is still a stub on this branch."""


def not_built(what: str) -> None:
    msg = f"{what}: not built yet on this branch"
    if REQUIRE_ALL:
        pytest.fail(msg + " (E2E_REQUIRE_ALL=1)")
    pytest.skip(msg)


# ---- processes ---------------------------------------------------------------------------
class Proc:
    """One child process: logs to a file, watches stdout for `listening on 127.0.0.1:PORT`."""

    registry: list["Proc"] = []
    log_dir: Path = LOG_ROOT
    _seq = 0

    def __init__(self, name: str, argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT):
        Proc._seq += 1
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Proc.log_dir / f"{Proc._seq:02d}-{name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "ab", buffering=0)
        self.log.write(f"$ {' '.join(self.argv)}\n".encode())
        self.port: int | None = None
        self.stopped = False
        self.stdout_lines: list[str] = []
        self._ready = threading.Event()
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            self.argv,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: teardown kills children too
        )
        Proc.registry.append(self)
        threading.Thread(target=self._pump, args=(self.popen.stdout, "out"), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, "err"), daemon=True).start()

    def _pump(self, stream, tag: str) -> None:
        for raw in iter(stream.readline, b""):
            self.log.write(f"[{tag}] ".encode() + raw)
            if tag == "out":
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.stdout_lines.append(line)
                if self.port is None and line.startswith("listening on 127.0.0.1:"):
                    try:
                        self.port = int(line.rsplit(":", 1)[1])
                    except ValueError:
                        continue
                    self._ready.set()
        stream.close()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_listening(self, timeout: float = READY_TIMEOUT, stub_hint: str | None = None) -> int:
        """Port from the `listening on` line. A stub exits early: NotBuiltYet."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._ready.wait(0.05):
                assert self.port is not None
                return self.port
            if self.popen.poll() is not None:
                time.sleep(0.1)  # let the pumps drain
                self.check_stub(stub_hint)
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before listening:\n{self.output()}")
        raise RuntimeError(f"{self.name} did not print 'listening on' within {timeout}s:\n{self.output()}")

    def check_stub(self, what: str | None) -> None:
        """Raises NotBuiltYet when the exited process looks like an unbuilt stub."""
        if self.popen.poll() is None or what is None:
            return
        out = self.output()
        body = "\n".join(line for line in out.splitlines()[1:])
        if "not built yet" in out or (self.popen.returncode == 0 and not body.strip()):
            raise NotBuiltYet(what)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 3.0) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        else:
            # The leader is gone; make sure nothing it spawned lingers.
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.write(f"[exit] {self.popen.returncode}\n".encode())

    @classmethod
    def stop_all(cls) -> None:
        for p in reversed(cls.registry):
            p.stop(grace=1.0)


def run_client(name: str, argv: list[str], timeout: float = 120.0) -> tuple[list[dict], str]:
    """Runs a peer client to completion; returns its JSON lines (one per scenario) and its log."""
    proc = Proc(name, argv)
    try:
        proc.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.stop()
        raise RuntimeError(f"{name} did not finish within {timeout}s:\n{proc.output()}")
    time.sleep(0.05)
    proc.stop()
    results = []
    for line in proc.stdout_lines:
        line = line.strip()
        if line.startswith("{"):
            try:
                results.append(json.loads(line))
            except ValueError:
                pass
    return results, proc.output()


# ---- pytest plumbing ---------------------------------------------------------------------
def pytest_configure(config) -> None:
    run = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    Proc.log_dir = LOG_ROOT / run


def pytest_unconfigure(config) -> None:
    Proc.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    marks = {p.log_path: p.log_path.stat().st_size if p.log_path.exists() else 0 for p in Proc.registry}
    item.stash[_LOG_MARKS] = marks
    yield


_LOG_MARKS = pytest.StashKey[dict]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    marks = item.stash.get(_LOG_MARKS, {})
    for p in Proc.registry:
        start = marks.get(p.log_path, 0)
        try:
            with open(p.log_path, "rb") as f:
                f.seek(start)
                new = f.read()
        except OSError:
            continue
        if not new:
            continue
        text = new.decode("utf-8", "replace")
        if len(text) > 12000:
            text = "…(truncated; full log: " + str(p.log_path) + ")\n" + text[-12000:]
        report.sections.append((f"log of {p.name} ({p.log_path})", text))


# ---- build -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def binary() -> Path:
    """target/debug/mcp-tunnel, built once (MCP_TUNNEL_BIN overrides)."""
    override = os.environ.get("MCP_TUNNEL_BIN")
    if override:
        return Path(override)
    cargo = os.environ.get("CARGO", "cargo")
    result = subprocess.run([cargo, "build", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"cargo build failed:\n{result.stderr[-6000:]}")
    path = ROOT / "target" / "debug" / "mcp-tunnel"
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def peers_installed() -> None:
    missing = [str(p) for p in (VENV2, VENV1, NODE_PEERS / "node_modules" / ".stamp") if not p.exists()]
    if missing:
        pytest.fail(f"test dependencies missing ({', '.join(missing)}): run scripts/test-deps.sh")


# ---- MCP servers -------------------------------------------------------------------------
class Server:
    def __init__(self, kind: str, proc: Proc, port: int, path: str = "/mcp"):
        self.kind = kind
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}{path}"


SERVER_KINDS = {
    # kind: (description, how to start)
    "py2-default": "Python SDK 2.x server, SSE + sessions",
    "py2-json": "Python SDK 2.x server, json_response",
    "py2-stateless": "Python SDK 2.x server, stateless_http",
    "py1-default": "Python SDK 1.x server, SSE + sessions",
    "everything": "server-everything (TypeScript), Streamable HTTP",
    "sample": "mcp-tunnel sample-server",
}


def start_server(kind: str, binary: Path | None = None) -> Server:
    if kind.startswith("py"):
        venv = VENV2 if kind.startswith("py2") else VENV1
        mode = kind.split("-", 1)[1]
        proc = Proc(f"server-{kind}", [venv, PEERS / "py_server.py", "--port", "0", "--mode", mode])
        return Server(kind, proc, proc.wait_listening())
    if kind == "everything":
        proc = Proc("server-everything", [NODE_PEERS / "run-everything.sh", "0"])
        return Server(kind, proc, proc.wait_listening())
    if kind == "sample":
        assert binary is not None
        proc = Proc("server-sample", [binary, "sample-server", "--listen", "127.0.0.1:0"])
        try:
            port = proc.wait_listening(stub_hint="mcp-tunnel sample-server")
        except NotBuiltYet as e:
            proc.stop()
            not_built(str(e))
        return Server(kind, proc, port)
    raise ValueError(kind)


class ServerPool:
    """One server per kind for the whole session (started on first use)."""

    def __init__(self, binary_fn):
        self.binary_fn = binary_fn
        self.servers: dict[str, Server] = {}
        self.failed: dict[str, BaseException] = {}

    def get(self, kind: str) -> Server:
        if kind in self.failed:
            raise self.failed[kind]
        if kind not in self.servers:
            binary = self.binary_fn() if kind == "sample" else None
            try:
                self.servers[kind] = start_server(kind, binary)
            except (pytest.skip.Exception, pytest.fail.Exception, RuntimeError) as e:
                self.failed[kind] = e
                raise
        return self.servers[kind]


@pytest.fixture(scope="session")
def servers(request, peers_installed) -> ServerPool:
    return ServerPool(lambda: request.getfixturevalue("binary"))


# ---- relay and agent ---------------------------------------------------------------------
class Relay:
    def __init__(self, binary: Path, state_dir: Path):
        init = subprocess.run(
            [binary, "relay", "init", "--state", state_dir], capture_output=True, text=True, timeout=30
        )
        out = (init.stdout + init.stderr).strip()
        if "not built yet" in out or (init.returncode == 0 and not out):
            raise NotBuiltYet("mcp-tunnel relay init")
        if init.returncode != 0:
            raise RuntimeError(f"relay init failed ({init.returncode}): {out}")
        line = next((ln for ln in init.stdout.splitlines() if ln.strip().startswith("{")), None)
        if line is None:
            raise RuntimeError(f"relay init printed no JSON line: {out}")
        creds = json.loads(line)
        self.tunnel_id: str = creds["tunnel_id"]
        self.runtime_key: str = creds["runtime_key"]
        self.connector_key: str = creds["connector_key"]
        self.org_id = creds.get("org_id")
        self.proc = Proc("relay", [binary, "relay", "serve", "--state", state_dir, "--listen", "127.0.0.1:0"])
        self.port = self.proc.wait_listening(stub_hint="mcp-tunnel relay serve")
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.mcp_url = f"{self.base_url}/v1/mcp/{self.tunnel_id}"

    def auth_header(self) -> str:
        return f"Authorization: Bearer {self.connector_key}"


RUNTIME_KEY_ENV = "MCP_TUNNEL_E2E_RUNTIME_KEY"


def start_agent(binary: Path, base_url: str, tunnel_id: str, runtime_key: str, mcp_url: str, name: str) -> Proc:
    proc = Proc(
        name,
        [
            binary, "agent",
            "--control-plane.base-url", base_url,
            "--control-plane.tunnel-id", tunnel_id,
            "--control-plane.api-key", f"env:{RUNTIME_KEY_ENV}",
            "--mcp.server-url", mcp_url,
            "--health.listen-addr", "off",
            "--log.level", "debug",
        ],
        env={RUNTIME_KEY_ENV: runtime_key},
    )
    return proc


def agent_must_run(proc: Proc, settle: float = 0.3) -> None:
    """A stub agent exits at once; a real one keeps polling."""
    time.sleep(settle)
    if not proc.alive():
        time.sleep(0.1)
        proc.check_stub("mcp-tunnel agent")
        raise RuntimeError(f"agent exited with {proc.popen.returncode}:\n{proc.output()}")


def wait_tunnel_connected(relay: Relay, agent: Proc, timeout: float = READY_TIMEOUT) -> None:
    """The relay answers 503 tunnel_client_not_connected until the agent has polled."""
    deadline = time.monotonic() + timeout
    body = json.dumps({"jsonrpc": "2.0", "id": "e2e-ready", "method": "ping"}).encode()
    last = None
    while time.monotonic() < deadline:
        if not agent.alive():
            agent.check_stub("mcp-tunnel agent")
            raise RuntimeError(f"agent exited with {agent.popen.returncode}:\n{agent.output()}")
        req = urllib.request.Request(
            relay.mcp_url,
            data=body,
            method="POST",
            headers={
                "Authorization": f"Bearer {relay.connector_key}",
                "Content-Type": "application/json",
                "Accept": "application/json, text/event-stream",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()
                return
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            last = f"{e.code} {text[:200]}"
            if e.code != 503 or "tunnel_client_not_connected" not in text:
                return  # the request crossed the tunnel; the MCP server's opinion of a bare ping is irrelevant
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            last = repr(e)
        time.sleep(0.2)
    raise RuntimeError(f"tunnel not connected within {timeout}s (last: {last})")


class Tunnel:
    """relay + agent in front of one MCP server: `url` is the relay's MCP endpoint."""

    def __init__(self, relay: Relay, agent: Proc, server: Server):
        self.relay = relay
        self.agent = agent
        self.server = server
        self.url = relay.mcp_url
        self.headers = [relay.auth_header()]


class TunnelPool:
    """One relay + agent per server kind, for the whole session."""

    def __init__(self, request, servers: ServerPool):
        self.request = request
        self.servers = servers
        self.tunnels: dict[str, Tunnel] = {}
        self.failed: dict[str, BaseException] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="mcp-tunnel-e2e-"))

    def get(self, kind: str) -> Tunnel:
        if kind in self.failed:
            raise self.failed[kind]
        if kind in self.tunnels:
            return self.tunnels[kind]
        binary = self.request.getfixturevalue("binary")
        try:
            try:
                relay = Relay(binary, self.tmp / f"relay-{kind}")
            except NotBuiltYet as e:
                not_built(str(e))
            server = self.servers.get(kind)
            agent = start_agent(binary, relay.base_url, relay.tunnel_id, relay.runtime_key, server.url, f"agent-{kind}")
            try:
                agent_must_run(agent)
                wait_tunnel_connected(relay, agent)
            except NotBuiltYet as e:
                not_built(str(e))
        except (pytest.skip.Exception, pytest.fail.Exception, RuntimeError) as e:
            self.failed[kind] = e
            raise
        self.tunnels[kind] = Tunnel(relay, agent, server)
        return self.tunnels[kind]

    def close(self) -> None:
        for t in self.tunnels.values():
            t.agent.stop()
            t.relay.proc.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tunnels(request, servers) -> TunnelPool:
    pool = TunnelPool(request, servers)
    yield pool
    pool.close()


# ---- fake control plane + agent (conformance) --------------------------------------------
@pytest.fixture
def fake_cp():
    cp = FakeControlPlane(max_poll_wait=1.0).start()
    yield cp
    cp.stop()


@pytest.fixture
def agent_on_fake(binary, fake_cp, servers):
    """Starts our agent against the fake control plane, forwarding to a given MCP URL."""
    started: list[Proc] = []

    def start(mcp_url: str) -> Proc:
        proc = start_agent(binary, fake_cp.base_url, fake_cp.tunnel_id, fake_cp.runtime_key, mcp_url, "agent-fake-cp")
        started.append(proc)
        try:
            agent_must_run(proc)
            fake_cp.wait_for(
                lambda cp: cp.requests_of("poll") or not proc.alive(),
                timeout=READY_TIMEOUT,
                what="the agent's first poll",
            )
            if not proc.alive():
                proc.check_stub("mcp-tunnel agent")
                raise RuntimeError(f"agent exited with {proc.popen.returncode}:\n{proc.output()}")
        except NotBuiltYet as e:
            proc.stop()
            not_built(str(e))
        return proc

    yield start
    for p in started:
        p.stop()


def new_id() -> str:
    return secrets.token_hex(4)
