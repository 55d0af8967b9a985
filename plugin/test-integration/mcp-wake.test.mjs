// MCP-mode HTTP wake against a real OpenClaw gateway (node:test, Node >= 24.16). The gateway runs
// with hooks.enabled and a fake OpenAI-compatible model; a real MCP client (mcp-wake-client.py)
// drives `memory-palace-mcp` on a real PostgreSQL (pgserver), whose `instance_routes` point at the
// gateway. A `message` send must make the gateway run a turn whose prompt holds the wake text
// (sender, id, the tool to call) and never the message content. Send -> model-turn latency is printed.
// Skip only with MEMORY_PALACE_SKIP_OPENCLAW=1 (said out loud).
//   MEMORY_PALACE_PYTHON       Python with memory-palace + pgserver installed (required)
//   MEMORY_PALACE_TEST_PG_URL  use this PostgreSQL instead of starting pgserver
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { createHarness, fakeModelConfig, freePort, log, poll, PYTHON, ROOT, SKIP } from "./harness.mjs";

const GATEWAY_TOKEN = "memory-palace-mcp-wake-gateway-token";
const HOOK_TOKEN = "memory-palace-mcp-wake-hook-token-0123456789"; // distinct from gateway auth, as the docs ask
if (SKIP) console.log("# MEMORY_PALACE_SKIP_OPENCLAW=1: the real OpenClaw MCP-wake integration test is SKIPPED on request");

const H = createHarness({ prefix: "mp-mcp-wake-it-", gatewayToken: GATEWAY_TOKEN });
const state = {};
const metrics = {};

async function modelRequests() {
  const res = await fetch(`http://127.0.0.1:${state.modelPort}/requests`);
  return res.json();
}

/** Run the MCP client; resolves with its JSON line and its stderr (the MCP server's log). */
function mcpClient(sender, recipients) {
  return new Promise((resolve, reject) => {
    execFile(PYTHON, [join(ROOT, "plugin/test-integration/mcp-wake-client.py"), state.dataDir, sender, ...recipients], { env: H.ENV, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`mcp-wake-client.py failed: ${error.message}\n${stderr.slice(-3000)}`));
      else resolve({ ...JSON.parse(stdout.trim().split("\n").at(-1)), stderr });
    });
  });
}

before(async () => {
  if (SKIP) return;
  assert.ok(PYTHON, "MEMORY_PALACE_PYTHON must name the Python that has memory-palace and pgserver (scripts/test-plugin sets it)");
  const pgReady = H.startHelper(PYTHON, [join(ROOT, "plugin/test-integration/pg-server.py")]);
  const model = await H.startHelper(process.execPath, [join(ROOT, "plugin/test-integration/fake-model.mjs")]);
  state.modelPort = JSON.parse(model.line).port;
  state.port = await freePort();
  state.gateway = `http://127.0.0.1:${state.port}`;

  mkdirSync(join(H.HOME, ".openclaw"), { recursive: true });
  writeFileSync(join(H.HOME, ".openclaw/openclaw.json"), JSON.stringify({
    gateway: { port: state.port },
    models: fakeModelConfig(state.modelPort),
    agents: { defaults: { model: { primary: "fake/fake-model" } } },
    // What docs/postgres.md tells a user to set for the MCP server's HTTP wake.
    hooks: {
      enabled: true,
      token: HOOK_TOKEN,
      path: "/hooks",
      allowedAgentIds: ["main"],
      allowRequestSessionKey: true,
      allowedSessionKeyPrefixes: ["hook:", "agent:main:palace-"],
    },
  }, null, 2));

  const t0 = Date.now();
  const gateway = await H.startGatewayReady(state.port, "the gateway (GET /readyz)", async () => (await fetch(`${state.gateway}/readyz`)).ok, 90_000, 100);
  state.gatewayLog = gateway.log;
  metrics.gatewayReadyMs = Date.now() - t0;

  const { line: pgUrl } = await pgReady;
  state.dataDir = join(H.T, "palace-data");
  mkdirSync(state.dataDir, { recursive: true });
  writeFileSync(join(state.dataDir, "config.json"), JSON.stringify({
    database: { url: pgUrl.replace(/\/postgres(\?|$)/, "/memory_palace_mcp_wake_it$1") },
    embedder: "hash",
    instances: ["a", "b", "c", "m", "s"],
    instance_routes: {
      b: { gateway: state.gateway, token: HOOK_TOKEN, agentId: "main", sessionKey: "agent:main:palace-b" },
      c: { gateway: `${state.gateway}/hooks`, token: HOOK_TOKEN, agentId: "main" }, // the main session
      m: { gateway: state.gateway, token: "not-the-hook-token" },
      s: { gateway: state.gateway, token: HOOK_TOKEN, agentId: "main", sessionKey: "elsewhere:s" }, // outside the prefixes
    },
  }, null, 2));
});

after(async () => {
  await H.stop();
  if (Object.keys(metrics).length) log(`metrics ${JSON.stringify(metrics)}`);
});

test("a message send from memory-palace-mcp wakes the recipient's session on a real gateway (POST /hooks/wake)", { skip: SKIP }, async () => {
  const out = await mcpClient("a", ["b", "c", "m", "s"]);
  const [toB, toC, toM, toS] = out.sends;
  for (const s of out.sends) assert.equal(typeof s.id, "number", JSON.stringify(out.sends));

  const turnFor = async (send) => poll(`a model turn holding the wake text for #${send.id} (to ${send.to})`, async () =>
    (await modelRequests()).find((r) => r.prompt.includes(`message #${send.id} from a for ${send.to}.`)), 45_000, 20).catch((error) => {
    throw new Error(`${error.message}\nMCP server log:\n${out.stderr.slice(-2000)}\ngateway log:\n${state.gatewayLog.join("").slice(-3000)}`);
  });
  const [turnB, turnC] = await Promise.all([turnFor(toB), turnFor(toC)]);
  for (const [send, turn] of [[toB, turnB], [toC, turnC]]) {
    assert.ok(turn.prompt.includes(`Read it with the Memory Palace message tool (palace_message in the OpenClaw plugin): action=get, instance_id=${send.to}.`), `the wake names the tool to call: ${turn.prompt.slice(-800)}`);
    assert.ok(!turn.prompt.includes(send.content), "the wake text never carries the message content");
    assert.ok(!turn.prompt.includes("4417-"), "nor any part of it");
  }
  // Each route landed where it says: b's sessionKey route in agent:main:palace-b, c's in the main session.
  const listed = JSON.parse(H.openclaw(["sessions", "--json"]));
  assert.deepEqual(listed.sessions.map((s) => s.key).sort(), ["agent:main:main", "agent:main:palace-b"], JSON.stringify(listed.sessions));
  assert.ok(listed.sessions.every((s) => s.model === "fake-model"), "both sessions ran a model turn");
  metrics.wakeTurnTools = turnB.tools;
  metrics.sendToModelTurnMs = { sessionKey: Math.round(turnB.at - toB.sentAtMs), mainSession: Math.round(turnC.at - toC.sentAtMs) };

  // The server logged each outcome: two accepted wakes; a wrong token (401) and a sessionKey
  // outside hooks.allowedSessionKeyPrefixes (400) refused, each logged with its fix.
  assert.match(out.stderr, /woke b through http:\/\/127\.0\.0\.1:\d+\/hooks\/wake for message \d+/);
  assert.match(out.stderr, /woke c through http:\/\/127\.0\.0\.1:\d+\/hooks\/wake for message \d+/);
  assert.match(out.stderr, /wake of m via \S+ failed: HTTP 401.*hooks\.token/);
  assert.match(out.stderr, /wake of s via \S+ failed: HTTP 400.*allowedSessionKeyPrefixes/);
  const requests = await modelRequests();
  for (const refused of [toM, toS]) assert.ok(!requests.some((r) => r.prompt.includes(`#${refused.id} `)), `the refused wake for ${refused.to} woke nobody`);

  // Warm: the b session exists now; a second send measures the steady-state path.
  const warm = await mcpClient("a", ["b"]);
  const turnWarm = await turnFor(warm.sends[0]);
  assert.ok(!turnWarm.prompt.includes(warm.sends[0].content));
  metrics.warmSendToModelTurnMs = Math.round(turnWarm.at - warm.sends[0].sentAtMs);
  log(`MCP send -> model turn on the woken session: ${metrics.sendToModelTurnMs.sessionKey} ms (sessionKey route), ${metrics.sendToModelTurnMs.mainSession} ms (main session), warm ${metrics.warmSendToModelTurnMs} ms`);
});
