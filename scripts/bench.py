#!/usr/bin/env python3
"""make bench: mcp-tunnel against a direct call and a plain TCP tunnel (rathole), on loopback.

Paths measured side by side, in one run, with the same load generator and MCP stand-in:
  direct      wrk -> nginx POST /mcp (a fixed JSON-RPC result, never the bottleneck)
  mcp-tunnel  wrk -> relay /v1/mcp/{tunnel} -> agent -> nginx
  rathole     wrk -> rathole server -> rathole client -> nginx (skipped when not installed)

Each figure is run twice and both runs are reported. Writes docs/benchmarks.md (between the
BEGIN/END markers, so the prose around the table is kept) and prints PASS/FAIL per budget.
The exit code is 0 whatever the budgets say: figures on a shared 2-core machine are noisy,
so budgets inform, they do not gate CI.

Usage: scripts/bench.py [--duration SECONDS] [--smoke] [--out PATH]
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, ".cache", "bench")
BIN = os.path.join(ROOT, "target", "release", "mcp-tunnel")
# The agent as it ships: the static musl edge build when `make static` made it.
STATIC_AGENT = os.path.join(ROOT, "target", "dist", "mcp-tunnel-agent-x86_64-unknown-linux-musl")
AGENT_BIN = STATIC_AGENT if os.path.exists(STATIC_AGENT) else BIN
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": "x" * 120}},
    },
    separators=(",", ":"),
)
RESULT = '{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}]}}'
CONCURRENCY = [1, 8, 64]
MIB = 1024 * 1024

BUDGETS = [
    ("agent-only static aarch64-musl binary <= 1.5 MiB", "bin_aarch64", lambda v, r: v <= 1.5 * MIB),
    ("agent idle RSS <= 2 MiB", "agent_idle_rss", lambda v, r: v <= 2 * MIB),
    ("agent RSS during c=64 <= 4 MiB", "agent_load_rss", lambda v, r: v <= 4 * MIB),
    (
        "relay+agent CPU per request <= 1.5x rathole's",
        "tunnel_cpu_us",
        lambda v, r: r.get("rathole_cpu_us") is not None and v <= 1.5 * r["rathole_cpu_us"],
    ),
    (
        "throughput at c=64 >= 0.75x rathole's",
        "tunnel_rps_64",
        lambda v, r: r.get("rathole_rps_64") is not None and v >= 0.75 * r["rathole_rps_64"],
    ),
    (
        "added p50 latency at c=1 <= 0.2 ms over direct",
        "tunnel_added_p50_ms",
        lambda v, r: v <= 0.2,
    ),
]


def log(msg):
    print(f"bench: {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw).stdout


def ensure_tools():
    """wrk from Debian; nginx extracted from its .deb (installing it would start a system nginx on :80)."""
    if not shutil.which("wrk"):
        log("installing wrk (Debian)")
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
    nginx = os.path.join(CACHE, "nginx", "usr", "sbin", "nginx")
    if not os.path.exists(nginx):
        log("extracting nginx from Debian's package")
        d = os.path.join(CACHE, "debs")
        os.makedirs(d, exist_ok=True)
        subprocess.run(["apt-get", "download", "-qq", "nginx"], cwd=d, check=True)
        for f in os.listdir(d):
            if f.endswith(".deb"):
                subprocess.run(["dpkg-deb", "-x", os.path.join(d, f), os.path.join(CACHE, "nginx")], check=True)
    return nginx


def rathole_bin():
    for cand in [
        os.environ.get("RATHOLE"),
        shutil.which("rathole"),
        os.path.expanduser("~/.cargo/bin/rathole"),
        os.path.join(CACHE, "bin", "rathole"),
    ]:
        if cand and os.path.exists(cand):
            return cand
    return None


class Procs:
    def __init__(self, tmp):
        self.tmp = tmp
        self.procs = []

    def start(self, name, args, env=None, stdout=None):
        logf = open(os.path.join(self.tmp, f"{name}.log"), "w")
        p = subprocess.Popen(
            args,
            stdout=stdout if stdout is not None else logf,
            stderr=logf,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.procs.append((name, p))
        return p

    def stop_all(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in reversed(self.procs):
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def start_nginx(procs, nginx, tmp):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    for d in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]:
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    with open(conf, "w") as f:
        f.write(
            f"""
worker_processes 1;
daemon off;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /mcp {{
            default_type application/json;
            return 200 '{RESULT}';
        }}
    }}
}}
"""
        )
    procs.start("nginx", [nginx, "-p", tmp, "-e", f"{tmp}/nginx-error.log", "-c", conf])
    wait_port(port)
    return port


def read_line_with(proc, pattern, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError("process exited before printing its address")
            continue
        m = re.search(pattern, line)
        if m:
            return m
    raise RuntimeError(f"timed out waiting for {pattern!r}")


def start_tunnel(procs, tmp, mcp_port):
    state = os.path.join(tmp, "relay-state")
    init = json.loads(sh([BIN, "relay", "init", "--state", state]).strip().splitlines()[-1])
    relay = procs.start(
        "relay",
        [BIN, "relay", "serve", "--state", state, "--listen", "127.0.0.1:0"],
        env={"LOG_LEVEL": "warn"},
        stdout=subprocess.PIPE,
    )
    m = read_line_with(relay, r"listening on 127\.0\.0\.1:(\d+)")
    relay_port = int(m.group(1))
    agent = procs.start(
        "agent",
        [
            AGENT_BIN,
            "agent",
            "--control-plane.base-url",
            f"http://127.0.0.1:{relay_port}",
            "--control-plane.tunnel-id",
            init["tunnel_id"],
            "--control-plane.api-key",
            "env:BENCH_RUNTIME_KEY",
            "--mcp.server-url",
            f"http://127.0.0.1:{mcp_port}/mcp",
            "--health.listen-addr",
            "off",
        ],
        env={"BENCH_RUNTIME_KEY": init["runtime_key"], "LOG_LEVEL": "warn"},
    )
    url = f"http://127.0.0.1:{relay_port}/v1/mcp/{init['tunnel_id']}"
    return relay, agent, url, {"Authorization": f"Bearer {init['connector_key']}"}


def start_rathole(procs, tmp, rathole, mcp_port):
    ctl = free_port()
    pub = free_port()
    with open(os.path.join(tmp, "rathole-server.toml"), "w") as f:
        f.write(
            f'[server]\nbind_addr = "127.0.0.1:{ctl}"\n[server.transport]\ntype = "tcp"\n'
            f'[server.services.mcp]\ntoken = "bench"\nbind_addr = "127.0.0.1:{pub}"\n'
        )
    with open(os.path.join(tmp, "rathole-client.toml"), "w") as f:
        f.write(
            f'[client]\nremote_addr = "127.0.0.1:{ctl}"\n[client.transport]\ntype = "tcp"\n'
            f'[client.services.mcp]\ntoken = "bench"\nlocal_addr = "127.0.0.1:{mcp_port}"\n'
        )
    env = {"RUST_LOG": "warn"}
    server = procs.start("rathole-server", [rathole, "--server", os.path.join(tmp, "rathole-server.toml")], env=env)
    wait_port(ctl)
    client = procs.start("rathole-client", [rathole, "--client", os.path.join(tmp, "rathole-client.toml")], env=env)
    wait_port(pub)
    return server, client, f"http://127.0.0.1:{pub}/mcp"


def write_lua(tmp, headers):
    path = os.path.join(tmp, "post.lua")
    hdrs = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        **headers,
    }
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = {json.dumps(BODY)}\n")
        for k, v in hdrs.items():
            f.write(f'wrk.headers["{k}"] = "{v}"\n')
    return path


def parse_latency(text, label):
    m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return None
    v = float(m.group(1))
    return v / 1000 if m.group(2) == "us" else v * 1000 if m.group(2) == "s" else v


def run_wrk(url, lua, conns, duration):
    return parse_wrk_output(sh(["wrk", "-t1", f"-c{conns}", f"-d{int(duration)}s", "--latency", "-s", lua, url]))


def proc_status(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
                elif k == "Threads":
                    out[k] = int(v)
    except OSError:
        pass
    return out


def cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def measure(url, lua, duration, pids):
    """Runs each concurrency; for the tunnel processes also CPU per request and memory under load."""
    hz = os.sysconf("SC_CLK_TCK")
    res = {}
    for c in CONCURRENCY:
        before = sum(cpu_ticks(p) for p in pids)
        mem = {}
        if c == CONCURRENCY[-1] and pids:
            # Sample memory half-way through the heaviest run.
            proc = subprocess.Popen(
                ["wrk", "-t1", f"-c{c}", f"-d{int(duration)}s", "--latency", "-s", lua, url],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(duration / 2)
            mem = {p: proc_status(p) for p in pids}
            out, _ = proc.communicate()
            r = parse_wrk_output(out)
        else:
            r = run_wrk(url, lua, c, duration)
        after = sum(cpu_ticks(p) for p in pids)
        if pids and r["requests"]:
            r["cpu_us_per_req"] = (after - before) / hz * 1e6 / r["requests"]
        r["mem"] = mem
        res[c] = r
    return res


def parse_wrk_output(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {
        "rps": rps,
        "requests": total,
        "p50_ms": parse_latency(out, "50%"),
        "p99_ms": parse_latency(out, "99%"),
        "errors": errors,
    }


def binary_sizes():
    sizes = {}
    for t in ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl", "armv7-unknown-linux-musleabihf"]:
        p = os.path.join(ROOT, "target", "dist", f"mcp-tunnel-agent-{t}")
        if os.path.exists(p):
            sizes[t] = os.path.getsize(p)
    return sizes


def fmt(v, unit="", digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}{unit}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="short runs; only checks that figures come out")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--agent-bin", help="the agent binary (default: the static musl build when present, else --bin)")
    ap.add_argument("--bin", help="the mcp-tunnel binary (default: target/release/mcp-tunnel, built if missing)")
    args = ap.parse_args()
    ap_agent = args.agent_bin
    global BIN, AGENT_BIN
    if args.bin:
        BIN = os.path.abspath(args.bin)
        AGENT_BIN = BIN
    if ap_agent:
        AGENT_BIN = os.path.abspath(ap_agent)
    duration = 1 if args.smoke else args.duration
    runs = 1 if args.smoke else args.runs

    nginx = ensure_tools()
    if not os.path.exists(BIN):
        sh(["cargo", "build", "--release"], cwd=ROOT)
    tmp = tempfile.mkdtemp(prefix="mcp-tunnel-bench-")
    procs = Procs(tmp)
    results = {"direct": [], "mcp-tunnel": [], "rathole": []}
    mem = {}
    try:
        mcp_port = start_nginx(procs, nginx, tmp)
        relay, agent, turl, theaders = start_tunnel(procs, tmp, mcp_port)
        time.sleep(1.0)
        mem["agent_idle"] = proc_status(agent.pid)
        mem["relay_idle"] = proc_status(relay.pid)
        rathole = rathole_bin()
        rpids = []
        if rathole:
            rs, rc, rurl = start_rathole(procs, tmp, rathole, mcp_port)
            rpids = [rs.pid, rc.pid]
            time.sleep(0.5)
            mem["rathole_client_idle"] = proc_status(rc.pid)
        direct_lua = write_lua(tmp, {})
        tdir = os.path.join(tmp, "t")
        os.makedirs(tdir)
        tunnel_lua = write_lua(tdir, theaders)
        for i in range(runs):
            log(f"run {i + 1}/{runs}: direct")
            results["direct"].append(measure(f"http://127.0.0.1:{mcp_port}/mcp", direct_lua, duration, []))
            log(f"run {i + 1}/{runs}: mcp-tunnel")
            results["mcp-tunnel"].append(measure(turl, tunnel_lua, duration, [relay.pid, agent.pid]))
            if rathole:
                log(f"run {i + 1}/{runs}: rathole")
                results["rathole"].append(measure(rurl, direct_lua, duration, rpids))
        time.sleep(2.0)
        mem["agent_after"] = proc_status(agent.pid)
        mem["relay_after"] = proc_status(relay.pid)
    finally:
        procs.stop_all()

    report = render(results, mem, binary_sizes(), duration, rathole_bin() is not None)
    print(report["table"])
    for line in report["budgets"]:
        print(line)
    if not args.smoke:
        write_doc(args.out, report)
    ok = all(r["requests"] > 0 for runs_ in results["mcp-tunnel"] for r in runs_.values())
    if not ok:
        log("the tunnel path produced no requests")
        return 1
    return 0


def render(results, mem, sizes, duration, have_rathole):
    def both(path, c, key, digits=0, unit=""):
        vals = [r[c].get(key) for r in results[path]]
        if not vals:
            return "skipped"
        return " / ".join(fmt(v, unit, digits) for v in vals)

    lines = [
        "| path | c | req/s (run 1 / run 2) | p50 ms | p99 ms | errors | CPU µs/req (tunnel procs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in ["direct", "mcp-tunnel", "rathole"]:
        for c in CONCURRENCY:
            if not results[path]:
                lines.append(f"| {path} | {c} | skipped (not installed) | | | | |")
                continue
            lines.append(
                f"| {path} | {c} | {both(path, c, 'rps')} | {both(path, c, 'p50_ms', 3)} | "
                f"{both(path, c, 'p99_ms', 3)} | {both(path, c, 'errors')} | "
                f"{both(path, c, 'cpu_us_per_req', 1) if path != 'direct' else '—'} |"
            )

    def mib(b):
        return "—" if b is None else f"{b / MIB:.2f} MiB"

    load = [r[64]["mem"] for r in results["mcp-tunnel"]]
    agent_pid_load = [list(m.values()) for m in load]
    mem_lines = [
        "| process | idle VmRSS | idle VmHWM | c=64 VmRSS (runs) | threads idle / c=64 | after load VmRSS |",
        "|---|---|---|---|---|---|",
    ]
    for idx, name in [(1, "agent"), (0, "relay")]:
        idle = mem.get(f"{name}_idle", {})
        during = [m[idx] if len(m) > idx else {} for m in agent_pid_load]
        after = mem.get(f"{name}_after", {})
        mem_lines.append(
            f"| {name} | {mib(idle.get('VmRSS'))} | {mib(idle.get('VmHWM'))} | "
            f"{' / '.join(mib(d.get('VmRSS')) for d in during)} | "
            f"{idle.get('Threads', '—')} / {' / '.join(str(d.get('Threads', '—')) for d in during)} | "
            f"{mib(after.get('VmRSS'))} |"
        )
    size_lines = ["| target | stripped agent-only binary |", "|---|---|"]
    for t, s in sizes.items():
        size_lines.append(f"| {t} | {s:,} bytes ({s / MIB:.2f} MiB) |")
    if not sizes:
        size_lines.append("| — | not built (run `make cross static`) |")

    def mean(path, c, key):
        vals = [r[c].get(key) for r in results[path] if r[c].get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    facts = {
        "bin_aarch64": sizes.get("aarch64-unknown-linux-musl"),
        "agent_idle_rss": mem.get("agent_idle", {}).get("VmRSS"),
        "agent_load_rss": max((d[1].get("VmRSS", 0) for d in agent_pid_load if len(d) > 1), default=None),
        "tunnel_cpu_us": mean("mcp-tunnel", 64, "cpu_us_per_req"),
        "rathole_cpu_us": mean("rathole", 64, "cpu_us_per_req") if have_rathole else None,
        "tunnel_rps_64": mean("mcp-tunnel", 64, "rps"),
        "rathole_rps_64": mean("rathole", 64, "rps") if have_rathole else None,
        "tunnel_added_p50_ms": (
            mean("mcp-tunnel", 1, "p50_ms") - mean("direct", 1, "p50_ms")
            if mean("mcp-tunnel", 1, "p50_ms") is not None and mean("direct", 1, "p50_ms") is not None
            else None
        ),
    }
    budgets = []
    for name, key, check in BUDGETS:
        v = facts.get(key)
        if v is None:
            verdict = "SKIP (not measured)"
        else:
            try:
                verdict = "PASS" if check(v, facts) else "FAIL"
            except TypeError:
                verdict = "SKIP (no rathole figure)"
        budgets.append(f"{verdict}: {name} (measured {fmt(v, '', 3) if isinstance(v, float) else v})")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}; agent binary {os.path.relpath(AGENT_BIN, ROOT)}"
    versions = []
    for cmd in [[BIN, "--version"], ["wrk", "-v"], [os.path.join(CACHE, "nginx", "usr", "sbin", "nginx"), "-v"]]:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True)
            versions.append((p.stdout or p.stderr).strip().splitlines()[0])
        except (OSError, IndexError):
            pass
    if rathole_bin():
        try:
            rv = sh([rathole_bin(), "--version"])
            m = re.search(r"Build Version:\s*(\S+)", rv)
            versions.append(f"rathole {m.group(1)}" if m else rv.strip().splitlines()[0])
        except (OSError, subprocess.CalledProcessError):
            pass
    head = (
        f"Measured {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} on {machine}; "
        f"{duration:g} s per figure, wrk -t1, keep-alive, a {len(BODY)}-byte JSON-RPC POST; "
        f"versions: {'; '.join(versions)}."
    )
    return {
        "table": "\n".join([head, "", *lines, "", *mem_lines, "", *size_lines]),
        "budgets": budgets,
    }


def write_doc(path, report):
    begin, end = "<!-- BEGIN make bench -->", "<!-- END make bench -->"
    block = "\n".join([begin, report["table"], "", "Budgets:", "", *[f"- {b}" for b in report["budgets"]], end])
    text = ""
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = (text or "# Benchmarks\n\n") + "\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
