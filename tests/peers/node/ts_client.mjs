// A real MCP client (the official TypeScript SDK) for the end-to-end tests.
//
//   node ts_client.mjs URL [--header 'Authorization: Bearer KEY'] --scenario NAME [--scenario NAME ...]
//
// Prints one JSON line per scenario {"scenario", "ok", ...facts}; exits 1 when one failed.
// Scenarios: initialize, tools, echo, progress, big, terminate.
// Options: --steps N, --big-size BYTES, --echo-tool NAME, --progress-tool NAME,
//          --timeout SECONDS (per scenario), --max-timeouts N (then the rest is not run).
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const ECHO_MESSAGE = 'hello through the tunnel: ünïcødé ✓ "quotes" \\ back';
const PATTERN = "0123456789abcdef";
const SCENARIOS = ["initialize", "tools", "echo", "progress", "big", "terminate"];

function parseArgs(argv) {
  const opts = {
    url: undefined,
    headers: {},
    scenarios: [],
    steps: 5,
    bigSize: 2 * 1024 * 1024,
    echoTool: "echo",
    progressTool: "progress",
    timeout: 30,
    maxTimeouts: 2,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--header") {
      const h = next();
      const at = h.indexOf(":");
      if (at <= 0) throw new Error(`--header wants 'Name: value', got ${h}`);
      opts.headers[h.slice(0, at).trim()] = h.slice(at + 1).trim();
    } else if (a === "--scenario") {
      const s = next();
      if (s === "all") opts.scenarios.push(...SCENARIOS);
      else if (SCENARIOS.includes(s)) opts.scenarios.push(s);
      else throw new Error(`unknown scenario ${s}`);
    } else if (a === "--steps") opts.steps = Number(next());
    else if (a === "--big-size") opts.bigSize = Number(next());
    else if (a === "--echo-tool") opts.echoTool = next();
    else if (a === "--progress-tool") opts.progressTool = next();
    else if (a === "--timeout") opts.timeout = Number(next());
    else if (a === "--max-timeouts") opts.maxTimeouts = Number(next());
    else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
    else opts.url = a;
  }
  if (!opts.url || opts.scenarios.length === 0) {
    throw new Error("usage: ts_client.mjs URL [--header K:V] --scenario NAME ...");
  }
  return opts;
}

// Wraps fetch to record every HTTP exchange the SDK makes.
function recordingFetch(log) {
  return async (input, init) => {
    const resp = await fetch(input, init);
    log.push({
      method: (init && init.method) || "GET",
      status: resp.status,
      session_id: resp.headers.get("mcp-session-id"),
    });
    return resp;
  };
}

async function connect(opts) {
  const log = [];
  const transport = new StreamableHTTPClientTransport(new URL(opts.url), {
    requestInit: { headers: opts.headers },
    fetch: recordingFetch(log),
  });
  const client = new Client({ name: "mcp-tunnel-ts-client", version: "1.0.0" });
  await client.connect(transport);
  return { client, transport, log };
}

const textOf = (result) =>
  (result.content || [])
    .filter((c) => c.type === "text")
    .map((c) => c.text)
    .join("");

const reqOpts = (opts) => ({ timeout: opts.timeout * 1000 });

const handlers = {
  async initialize(opts) {
    const { client, transport } = await connect(opts);
    const out = {
      protocol_version: transport.protocolVersion ?? null,
      server_name: client.getServerVersion()?.name ?? null,
      session_id: transport.sessionId ?? null,
      has_tools_capability: Boolean(client.getServerCapabilities()?.tools),
    };
    await client.close();
    return out;
  },
  async tools(opts) {
    const { client } = await connect(opts);
    const res = await client.listTools(undefined, reqOpts(opts));
    await client.close();
    return { tools: res.tools.map((t) => t.name).sort() };
  },
  async echo(opts) {
    const { client } = await connect(opts);
    const res = await client.callTool(
      { name: opts.echoTool, arguments: { message: ECHO_MESSAGE } },
      undefined,
      reqOpts(opts),
    );
    await client.close();
    const text = textOf(res);
    return { text, matches: text === ECHO_MESSAGE, is_error: Boolean(res.isError) };
  },
  async progress(opts) {
    const { client } = await connect(opts);
    const events = [];
    const args =
      opts.progressTool === "progress"
        ? { steps: opts.steps }
        : { duration: opts.steps * 0.1, steps: opts.steps };
    const res = await client.callTool({ name: opts.progressTool, arguments: args }, undefined, {
      ...reqOpts(opts),
      onprogress: (p) => events.push({ progress: p.progress, total: p.total ?? null }),
    });
    events.push("result");
    await client.close();
    const values = events.filter((e) => e !== "result").map((e) => e.progress);
    return {
      count: values.length,
      values,
      in_order: values.every((v, i) => i === 0 || values[i - 1] <= v),
      result_last: events[events.length - 1] === "result",
      text: textOf(res),
    };
  },
  async big(opts) {
    const { client } = await connect(opts);
    const res = await client.callTool(
      { name: "big", arguments: { size: opts.bigSize } },
      undefined,
      reqOpts(opts),
    );
    await client.close();
    const text = textOf(res);
    const expected = PATTERN.repeat(Math.floor(opts.bigSize / PATTERN.length) + 1).slice(0, opts.bigSize);
    return { size: Buffer.byteLength(text), intact: text === expected };
  },
  async terminate(opts) {
    const { client, transport, log } = await connect(opts);
    await client.listTools(undefined, reqOpts(opts));
    const sessionId = transport.sessionId ?? null;
    let after = null;
    if (sessionId) {
      await transport.terminateSession();
      const resp = await fetch(opts.url, {
        method: "POST",
        headers: {
          ...opts.headers,
          "content-type": "application/json",
          accept: "application/json, text/event-stream",
          "mcp-session-id": sessionId,
          "mcp-protocol-version": transport.protocolVersion ?? "2025-11-25",
        },
        body: JSON.stringify({ jsonrpc: "2.0", id: 99, method: "tools/list" }),
      });
      after = resp.status;
      await resp.arrayBuffer();
    }
    await client.close();
    return {
      session_id: sessionId,
      delete_statuses: log.filter((x) => x.method === "DELETE").map((x) => x.status),
      status_after_delete: after,
    };
  },
};

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`ts_client: ${e.message}\n`);
    return 2;
  }
  let failed = 0;
  let timeouts = 0;
  for (const name of opts.scenarios) {
    const out = { scenario: name, sdk: "ts" };
    const started = performance.now();
    if (timeouts >= opts.maxTimeouts) {
      // A peer that stopped answering would cost a timeout per scenario.
      failed++;
      Object.assign(out, { ok: false, error: `not run: ${timeouts} earlier scenarios timed out`, seconds: 0 });
      process.stdout.write(JSON.stringify(out) + "\n");
      continue;
    }
    let timer;
    try {
      const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => {
          timeouts++;
          reject(new Error(`timed out after ${opts.timeout}s`));
        }, opts.timeout * 1000);
      });
      Object.assign(out, await Promise.race([handlers[name](opts), timeout]));
      out.ok = true;
    } catch (e) {
      failed++;
      out.ok = false;
      out.error = `${e?.name ?? "Error"}: ${e?.message ?? e}`;
      out.trace = String(e?.stack ?? "").slice(-2000);
    } finally {
      clearTimeout(timer);
      out.seconds = Math.round(performance.now() - started) / 1000;
    }
    process.stdout.write(JSON.stringify(out) + "\n");
  }
  return failed ? 1 : 0;
}

process.exitCode = await main();
// Keep-alive sockets from fetch must not hold the process open.
process.exit(process.exitCode);
