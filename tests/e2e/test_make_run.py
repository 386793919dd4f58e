"""`make run` (scripts/run-demo.sh), the README's first command: it must make the
call through the tunnel, show every hop, and leave nothing running."""

from __future__ import annotations

import os
import re
import socket
import subprocess

from conftest import ROOT, not_built


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_make_run_calls_echo_through_the_tunnel(binary):
    env = dict(os.environ, DEMO_MESSAGE="e2e make run check")
    done = subprocess.run(
        [ROOT / "scripts" / "run-demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    out = done.stdout + done.stderr
    if done.returncode != 0 and ("is the relay built" in out or "not built yet" in out):
        not_built("make run (relay)")
    assert done.returncode == 0, out
    for hop in ("1. AI client → relay", "2. relay → agent", "3. agent → MCP server", "4. relay → AI client"):
        assert hop in out, f"missing hop {hop!r}:\n{out}"
    # The echo crossed the last hop and came back.
    assert out.count("e2e make run check") >= 3, out
    assert "✓ echo answered through the tunnel" in out
    # No key is ever printed.
    assert not re.search(r"Bearer (?!<connector key>)\S", out), out
    # Everything was stopped: the relay's and the sample server's ports are closed.
    relay = re.search(r"relay\s+http://127\.0\.0\.1:(\d+)", out)
    sample = re.search(r"forwards to http://127\.0\.0\.1:(\d+)/mcp", out)
    assert relay and sample, out
    for port in (int(relay.group(1)), int(sample.group(1))):
        assert not port_open(port), f"port {port} still open after make run"
