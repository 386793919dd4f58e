#!/usr/bin/env python3
"""Hot-path probe for `make bench`'s tunnel path: instruction counts and syscalls per request.

Wall-clock figures on a shared 2-core machine are noisy; instruction counts are not. This
starts nginx (the MCP stand-in), the relay and the agent like scripts/bench.py does, runs
one of them under a probe, warms up, then sends exactly N requests through the tunnel from
C keep-alive client connections and reports per-request costs:

  --probe callgrind  valgrind --tool=callgrind; counters are zeroed after the warm-up and
                     dumped after the N requests, so the figure is the steady state only
                     (callgrind_annotate on the printed file shows where it goes)
  --probe strace     strace -f -c attached after the warm-up: syscalls per request by name
  --probe cpu        wrk -t1 -cC for --duration seconds: CPU µs (user/system) and context
                     switches per request for the relay and the agent separately
  --probe none       just the request loop (wall time per request, for a smoke check)

Usage: scripts/bench_probe.py --target agent|relay --probe callgrind|strace|none [-n N] [-c C]
Needs target/release/mcp-tunnel (cargo build --release).
"""

import argparse
import glob
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def send(port, path, headers, n):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    hdrs = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers}
    for _ in range(n):
        conn.request("POST", path, body=bench.BODY, headers=hdrs)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")
    conn.close()


def load(port, path, headers, n, c):
    per = n // c
    errors = []

    def run():
        try:
            send(port, path, headers, per)
        except Exception as e:  # reported after the join
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(c)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return per * c, time.monotonic() - t0


def task_stats(pid):
    """utime, stime (ticks), voluntary and involuntary context switches over all threads."""
    tot = [0, 0, 0, 0]
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tot[0] += int(fields[11])
            tot[1] += int(fields[12])
            with open(f"{task}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        tot[2] += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        tot[3] += int(line.split()[1])
        except OSError:
            pass
    return tot


def wrapped(probe, out):
    if probe == "callgrind":
        return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--vgdb=yes"]
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", choices=["agent", "relay"], default="agent")
    ap.add_argument("--probe", choices=["callgrind", "strace", "cpu", "none"], default="callgrind")
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-c", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()

    nginx = bench.ensure_tools()
    tmp = tempfile.mkdtemp(prefix="mcp-tunnel-probe-")
    out = os.path.join(tmp, f"{args.probe}.{args.target}.out")
    prefix = wrapped(args.probe, out)
    orig_bin = bench.BIN
    procs = bench.Procs(tmp)
    try:
        mcp_port = bench.start_nginx(procs, nginx, tmp)
        # start_tunnel runs BIN for both; wrap only the probed one by swapping the start method.
        real_start = procs.start

        def start(name, argv, env=None, stdout=None):
            if name == args.target and prefix:
                argv = prefix + argv
            return real_start(name, argv, env=env, stdout=stdout)

        procs.start = start
        relay, agent, url, headers = bench.start_tunnel(procs, tmp, mcp_port)
        procs.start = real_start
        m = re.match(r"http://127\.0\.0\.1:(\d+)(/.*)", url)
        port, path = int(m.group(1)), m.group(2)
        # The agent may still be starting up (much slower under valgrind).
        end = time.monotonic() + 60
        while True:
            try:
                load(port, path, headers, 1, 1)
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.5)
        load(port, path, headers, args.warmup, args.c)
        target = agent if args.target == "agent" else relay
        if args.probe == "callgrind":
            subprocess.run(["callgrind_control", "-z", str(target.pid)], check=True, capture_output=True)
        if args.probe == "cpu":
            lua = bench.write_lua(tmp, headers)
            st = bench.proc_status(agent.pid)
            print(f"agent before the load: VmRSS {st.get('VmRSS', 0) / 1048576:.2f} MiB, {st.get('Threads')} threads")
            before = {p.pid: task_stats(p.pid) for p in (relay, agent)}
            r = bench.run_wrk(url, lua, args.c, args.duration)
            after = {p.pid: task_stats(p.pid) for p in (relay, agent)}
            st = bench.proc_status(agent.pid)
            print(f"agent after the load: VmRSS {st.get('VmRSS', 0) / 1048576:.2f} MiB, VmHWM {st.get('VmHWM', 0) / 1048576:.2f} MiB, {st.get('Threads')} threads")
            n = r["requests"]
            print(f"wrk c={args.c}: {r['rps']:,.0f} req/s, p50 {r['p50_ms']} ms, {r['errors']} errors")
            hz = os.sysconf("SC_CLK_TCK")
            for name, p in (("relay", relay), ("agent", agent)):
                d = [a - b for a, b in zip(after[p.pid], before[p.pid])]
                print(
                    f"  {name}: user {d[0] / hz * 1e6 / n:.1f} + sys {d[1] / hz * 1e6 / n:.1f} µs/req, "
                    f"{d[2] / n:.2f} voluntary + {d[3] / n:.2f} involuntary context switches/req"
                )
            return 0
        tracer = None
        if args.probe == "strace":
            # Attached after the warm-up, so only the steady state is counted.
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", out, "-p", str(target.pid)])
            time.sleep(1.0)
        n, secs = load(port, path, headers, args.n, args.c)
        if tracer:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(timeout=30)
        if args.probe == "callgrind":
            subprocess.run(["callgrind_control", "-d", str(target.pid)], check=True, capture_output=True)
        print(f"{n} requests, c={args.c}, {secs / n * 1e6:.0f} us/request wall (probe overhead included)")
    finally:
        procs.stop_all()
    bench.BIN = orig_bin
    if args.probe == "callgrind":
        dumps = sorted(glob.glob(out + "*"), key=os.path.getmtime)
        dump = [d for d in dumps if re.search(r"\.\d+$", d)] or dumps
        dump = dump[0] if len(dump) == 1 else dump[-2] if dump[-1] == out else dump[-1]
        total = None
        with open(dump) as f:
            for line in f:
                if line.startswith("summary:") or line.startswith("totals:"):
                    total = int(line.split()[1])
        print(f"callgrind {args.target}: {total / n:,.0f} instructions/request ({dump})")
    elif args.probe == "strace":
        with open(out) as f:
            text = f.read()
        print(f"strace -f -c {args.target}, per request:")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
                calls = int(parts[3])
                if calls / n >= 0.05:
                    print(f"  {parts[-1]:<16} {calls / n:6.2f}")
        tot = [l for l in text.splitlines() if l.rstrip().endswith("total")]
        if tot:
            print(f"  total            {int(tot[0].split()[2]) / n:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
