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

function realClient(
  health?: { failures: unknown[]; cleared: number },
  served?: () => Array<{ instance: string; database?: string }>,
  delivering?: () => boolean,
) {
  const dataDir = mkdtempSync(join(tmpdir(), "mp-real-"));
  dirs.push(dataDir);
  const launch = bridgeLaunch(parseConfig({ pythonPath: PYTHON, dataDir, instanceId: "a" }));
  const logger = memoryLogger();
  const events: Array<{ event: string; data: Record<string, unknown> }> = [];
  const client = new BridgeClient({
    launch: { ...launch, env: { ...launch.env, MEMORY_PALACE_EMBEDDER: "hash" } },
    readyTimeoutMs: 20_000,
    logger,
    backoff: { initialMs: 100, maxMs: 1000 },
    onEvent: (event, data) => events.push({ event, data: data as Record<string, unknown> }),
    ...(served ? { served } : {}),
    ...(delivering ? { delivering } : {}),
  });
  if (health) client.setHealth({ reportFailure: (e) => health.failures.push(e), clearFailure: () => health.cleared++ });
  clients.push(client);
  return { client, logger, events, dataDir };
}

interface Health {
  served: string[];
  listeners: Record<string, { served: string[] }>;
  in_flight: number;
}

describe("BridgeClient with the real bridge", () => {
  it("rejects the pending call when the bridge is killed, restarts, serves the announced instances again, and serves", async () => {
    const health = { failures: [] as unknown[], cleared: 0 };
    const registry = [{ instance: "b" }];
    const { client, events } = realClient(health, () => registry);
    const stored = (await client.call("memory_set", { content: "persisted across restarts" }, { timeoutMs: 20_000 })) as { id: number };
    await client.serve("c", "work"); // an instance that lives in a named database
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
    // The new process serves only "a" by itself; b (registry) and c in "work" come from the announcements.
    const state = async () => (await client.call("_health", {}, { timeoutMs: 5000 })) as Health;
    const end = Date.now() + 30_000; // a restart plus a named database's first open, on a busy host
    let now = await state();
    while (!(now.served.includes("b") && now.listeners.work?.served.includes("c")) && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
      now = await state();
    }
    expect(now.served).toEqual(["a", "b", "c"]);
    expect(Object.keys(now.listeners).sort()).toEqual(["default", "work"]);
    // The bridge serves them before the client has read the replies to its announcements.
    await until(() => client.unannounced === 0 && client.served.length === 3, 10_000, "the replies to the announcements");
    expect(client.served).toEqual(["a", "b", "c"]);
    // b is not a caller here: the event for it exists only because the plugin announced b.
    const sent = (await client.call("message", { action: "send", from_instance: "a", to_instance: "b", content: "hi", subject: "s" }, { timeoutMs: 20_000 })) as { id: number };
    await until(() => events.some((e) => e.event === "new_message" && e.data.message_id === sent.id), 10_000, "the new_message event");
    const event = events.find((e) => e.event === "new_message" && e.data.message_id === sent.id);
    expect(event?.data).toMatchObject({ recipients: ["b"], database: "default", from_instance: "a", to_instance: "b" });
    expect(event?.data).not.toHaveProperty("content");
  });

  it("delivers nothing while the process can wake no one, then everything once, when told", async () => {
    let service = false;
    const { client, events } = realClient(undefined, () => [{ instance: "b" }], () => service);
    const sent = (await client.call(
      "message", { action: "send", from_instance: "a", to_instance: "b", content: "while no service runs" }, { timeoutMs: 20_000 },
    )) as { id: number };
    const health = (await client.call("_health", {}, { timeoutMs: 5000 })) as { delivering: boolean };
    expect(health.delivering).toBe(false);
    await new Promise((r) => setTimeout(r, 1500)); // a delivering bridge polls every 0.5 s
    expect(events.filter((e) => e.event === "new_message")).toHaveLength(0);
    const got = (await client.call("message", { action: "get", instance_id: "b" }, { timeoutMs: 20_000 })) as {
      messages: Array<{ id: number; delivery_status: string }>;
    };
    expect(got.messages.find((m) => m.id === sent.id)?.delivery_status).toBe("pending");
    service = true;
    await client.resumeDelivery();
    await until(() => events.some((e) => e.event === "new_message" && e.data.message_id === sent.id), 10_000, "the held wake");
    await new Promise((r) => setTimeout(r, 700));
    expect(events.filter((e) => e.event === "new_message" && e.data.message_id === sent.id)).toHaveLength(1);
  });

  it("hands the wakes it received to the next bridge after a SIGKILL, so none is repeated", async () => {
    const { client, events, dataDir } = realClient(undefined, () => [{ instance: "b" }]);
    const sent = (await client.call("message", { action: "send", from_instance: "a", to_instance: "b", content: "x" }, { timeoutMs: 20_000 })) as { id: number };
    await until(() => events.some((e) => e.event === "new_message" && e.data.message_id === sent.id), 10_000, "the wake");
    const pid = client.pid as number;
    // As if the bridge died after writing the wake but before committing its claim. SIGSTOP can
    // freeze it inside a write transaction (its periodic ack sweep): then let it run and retry.
    const db = `import sqlite3; c = sqlite3.connect(${JSON.stringify(join(dataDir, "memories.db"))}, timeout=0.2)`;
    for (let attempt = 1; ; attempt++) {
      process.kill(pid, "SIGSTOP");
      try {
        execFileSync(PYTHON, ["-c", `${db}; c.execute("DELETE FROM message_deliveries"); c.commit()`], { stdio: "pipe" });
        break;
      } catch (error) {
        if (attempt >= 20) throw error;
        process.kill(pid, "SIGCONT");
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    process.kill(pid, "SIGKILL");
    await until(() => client.pid !== undefined && client.pid !== pid && client.state === "ready", 20_000, "the next bridge");
    const end = Date.now() + 10_000;
    while (!((await client.call("_health", {}, { timeoutMs: 5000 })) as { delivering: boolean }).delivering) {
      if (Date.now() > end) throw new Error("the next bridge never started delivering");
      await new Promise((r) => setTimeout(r, 50));
    }
    await new Promise((r) => setTimeout(r, 1500)); // a replay would have come by now
    expect(events.filter((e) => e.event === "new_message" && e.data.message_id === sent.id)).toHaveLength(1);
    const recorded = execFileSync(PYTHON, ["-c", `${db}; print(c.execute("SELECT count(*) FROM message_deliveries").fetchone()[0])`]);
    expect(String(recorded).trim()).toBe("1"); // recorded again, from the hand-over
  });

  it("carries the bridge's domain code on a refusal: NOT_FOUND, and refuses the old channel param", async () => {
    const { client } = realClient();
    const error = (await client.call("memory_get", { memory_ids: 987_654 }, { timeoutMs: 20_000 }).catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("NOT_FOUND");
    expect(error.data).toMatchObject({ kind: "NOT_FOUND" });
    expect(error.message).toMatch(/memory_get: memory 987654 does not exist/);
    const old = (await client.call("_subscribe", { channel: "b" }, { timeoutMs: 10_000 }).catch((e: unknown) => e)) as BridgeError;
    expect(old.code).toBe("INVALID_PARAMS");
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
    const health = (await client.call("_health", {}, { timeoutMs: 10_000 })) as Health;
    const end = Date.now() + 5000;
    let inFlight = health.in_flight;
    while (inFlight > 0 && Date.now() < end) {
      inFlight = ((await client.call("_health", {}, { timeoutMs: 5000 })) as Health).in_flight;
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
