// The supervisor against the REAL Python bridge (`python -m memory_palace.bridge`) on a SQLite
// data dir: the test pauses and kills the process itself. MEMORY_PALACE_PYTHON names the Python
// that has memory-palace installed (scripts/test-plugin sets it); there is no silent skip.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeAll, describe, expect, it } from "vitest";
import { alive, memoryLogger, until } from "./test-helpers.js";
import { BridgeClient } from "./bridge-client.js";
import { bridgeLaunch, parseConfig } from "./config.js";
import type { BridgeError } from "./errors.js";

const PYTHON = process.env.MEMORY_PALACE_PYTHON ?? "python3";
const clients: BridgeClient[] = [];
const dirs: string[] = [];

beforeAll(() => {
  try {
    execFileSync(PYTHON, ["-c", "import memory_palace.bridge"], { stdio: "pipe" });
  } catch (error) {
    throw new Error(`${PYTHON} cannot import memory_palace.bridge; set MEMORY_PALACE_PYTHON to the project's venv python (${String(error)})`);
  }
});

afterEach(async () => {
  for (const client of clients.splice(0)) {
    const pid = client.pid;
    if (pid) process.kill(pid, "SIGCONT");
    await client.stop();
  }
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function realClient(health?: { failures: unknown[]; cleared: number }) {
  const dataDir = mkdtempSync(join(tmpdir(), "mp-real-"));
  dirs.push(dataDir);
  const launch = bridgeLaunch(parseConfig({ pythonPath: PYTHON, dataDir, instanceId: "a" }));
  const logger = memoryLogger();
  const client = new BridgeClient({
    launch: { ...launch, env: { ...launch.env, MEMORY_PALACE_EMBEDDER: "hash" } },
    readyTimeoutMs: 20_000,
    logger,
    backoff: { initialMs: 100, maxMs: 1000 },
  });
  if (health) client.setHealth({ reportFailure: (e) => health.failures.push(e), clearFailure: () => health.cleared++ });
  clients.push(client);
  return { client, logger };
}

describe("BridgeClient with the real bridge", () => {
  it("rejects the pending call when the bridge is killed, restarts, re-subscribes, and serves again", async () => {
    const health = { failures: [] as unknown[], cleared: 0 };
    const { client } = realClient(health);
    await client.subscribe("memory_palace_msg_b");
    const stored = (await client.call("memory_set", { content: "persisted across restarts" }, { timeoutMs: 20_000 })) as { id: number };
    const pid = client.pid as number;
    process.kill(pid, "SIGSTOP"); // frozen: the next call is certainly still pending when it dies
    const pending = client.call("memory_stats", {}, { timeoutMs: 30_000 });
    await until(() => client.inFlight === 1, 2000, "the pending call");
    process.kill(pid, "SIGKILL");
    const error = (await pending.catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("BRIDGE_EXITED");
    expect(error.message).toMatch(/killed by SIGKILL.*restarting/s);
    expect(health.failures).toHaveLength(1);
    const got = (await client.call("memory_get", { memory_ids: stored.id }, { timeoutMs: 20_000 })) as { memory: { content: string } };
    expect(got.memory.content).toBe("persisted across restarts");
    expect(client.pid).not.toBe(pid);
    expect(alive(pid)).toBe(false);
    expect(health.cleared).toBe(1);
    const channels = async () => ((await client.call("_health", {}, { timeoutMs: 5000 })) as { listened_channels: string[] }).listened_channels;
    const end = Date.now() + 5000;
    while (!(await channels()).some((c) => c.endsWith("b")) && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
    expect((await channels()).some((c) => c.endsWith("b"))).toBe(true);
  });

  it("times out a call the bridge cannot answer, cancels it there, and keeps serving", async () => {
    const { client } = realClient();
    await client.start();
    const pid = client.pid as number;
    process.kill(pid, "SIGSTOP");
    const started = Date.now();
    const error = (await client.call("memory_stats", {}, { timeoutMs: 300 }).catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("TIMEOUT");
    expect(Date.now() - started).toBeLessThan(2000);
    expect(client.inFlight).toBe(0);
    process.kill(pid, "SIGCONT"); // the bridge now reads the call and its _cancel
    const health = (await client.call("_health", {}, { timeoutMs: 10_000 })) as { in_flight: number };
    const end = Date.now() + 5000;
    let inFlight = health.in_flight;
    while (inFlight > 0 && Date.now() < end) {
      inFlight = ((await client.call("_health", {}, { timeoutMs: 5000 })) as { in_flight: number }).in_flight;
    }
    expect(inFlight).toBe(0);
    expect(client.pid).toBe(pid);
    expect(await client.call("memory_stats", {}, { timeoutMs: 10_000 })).toBeTypeOf("object");
  });

  it("fails fast with the bridge's own reason when its config is bad", async () => {
    const dataDir = mkdtempSync(join(tmpdir(), "mp-bad-"));
    dirs.push(dataDir);
    const launch = bridgeLaunch(parseConfig({ pythonPath: PYTHON, dataDir, databaseUrl: "mysql://nope/x" }));
    const client = new BridgeClient({ launch, readyTimeoutMs: 20_000, logger: memoryLogger(), backoff: { initialMs: 60_000, maxMs: 60_000 } });
    clients.push(client);
    const started = Date.now();
    const error = (await client.start().catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("BRIDGE_UNAVAILABLE");
    expect(error.message).toMatch(/refused to start|exited/);
    expect(error.message).toMatch(/mysql|sqlite|postgres/i);
    expect(Date.now() - started).toBeLessThan(15_000);
  });
});
