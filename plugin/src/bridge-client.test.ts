// Supervisor protocol edge cases against a small fake bridge process (real child processes,
// real pipes). Restart and timeout against the real Python bridge are in bridge-real.test.ts.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterEach, describe, expect, it } from "vitest";
import { BridgeClient } from "./bridge-client.js";
import { BridgeError } from "./errors.js";
import { alive, memoryLogger, until } from "./test-helpers.js";

const FAKE = fileURLToPath(new URL("../test-support/fake-bridge.mjs", import.meta.url));

const clients: BridgeClient[] = [];
const dirs: string[] = [];

function fake(mode: string, extra: Partial<ConstructorParameters<typeof BridgeClient>[0]> = {}, env: Record<string, string> = {}) {
  const dir = mkdtempSync(join(tmpdir(), "mp-fake-"));
  dirs.push(dir);
  const log = join(dir, "starts.log");
  const events: Array<{ event: string; data: unknown }> = [];
  const logger = memoryLogger();
  const client = new BridgeClient({
    launch: {
      command: process.execPath,
      args: [FAKE],
      env: { FAKE_BRIDGE_MODE: mode, FAKE_BRIDGE_LOG: log, ...env },
      installHint: "install the bridge with `pip install memory-palace`",
    },
    readyTimeoutMs: 3000,
    logger,
    onEvent: (event, data) => events.push({ event, data }),
    backoff: { initialMs: 50, maxMs: 400 },
    stop: { shutdownMs: 500, termMs: 500, killMs: 2000 },
    ...extra,
  });
  clients.push(client);
  const starts = () => readFileSync(log, "utf8").trim().split("\n").filter(Boolean).length;
  return { client, events, logger, starts };
}

afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.stop()));
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

describe("BridgeClient with a fake bridge", () => {
  it("shares one spawn between concurrent first calls", async () => {
    const { client, starts } = fake("normal");
    const results = await Promise.all(
      Array.from({ length: 8 }, (_, i) => client.call("echo", { i }, { timeoutMs: 5000 })),
    );
    expect(results).toEqual(Array.from({ length: 8 }, (_, i) => ({ i })));
    expect(starts()).toBe(1);
  });

  it("sends the caller with a request and reports the ready line's identity", async () => {
    const { client, logger } = fake("normal", {}, { MEMORY_PALACE_INSTANCE_ID: "gw" });
    expect(await client.call("memory_stats", {}, { timeoutMs: 5000, caller: "alice" })).toEqual({ method: "memory_stats", params: {}, caller: "alice" });
    expect(await client.call("memory_stats", {}, { timeoutMs: 5000 })).toEqual({ method: "memory_stats", params: {} });
    const denied = (await client.call("memory_set", { content: "x", instance_id: "bob" }, { timeoutMs: 5000, caller: "alice" }).catch((e: unknown) => e)) as BridgeError;
    expect(denied.code).toBe("PERMISSION_DENIED");
    expect(client.identity).toEqual({ instance: "gw", role: "admin", verified: false });
    expect(logger.lines.join("\n")).toContain("identity gw (admin, unverified: no token)");
    // Announcements carry the instance as caller, so a bridge bound by caller accepts them.
    await client.serve("alice");
    expect(client.served).toEqual(["alice", "gw"]);
  });

  it("turns a refusal into a BridgeError carrying the bridge's domain code and data", async () => {
    const { client } = fake("normal");
    const error = await client.call("fail", {}, { timeoutMs: 5000 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BridgeError);
    expect((error as BridgeError).code).toBe("NOT_FOUND");
    expect((error as BridgeError).data).toEqual({ kind: "NOT_FOUND", id: 999 });
    expect((error as BridgeError).message).toContain("fail: memory 999 does not exist");
  });

  it("reads tools, extensions and instance from the ready line", async () => {
    const { client } = fake("normal", {}, { FAKE_BRIDGE_EXTENSIONS: "db_manager", MEMORY_PALACE_INSTANCE_ID: "me" });
    expect(client.extensions).toEqual([]);
    const info = await client.start();
    expect(info.extensions).toEqual(["db_manager"]);
    expect(info.tools).toContain("memory_list_databases");
    expect(info.instanceId).toBe("me");
    expect(client.extensions).toEqual(["db_manager"]);
    expect(client.served).toEqual(["me"]);
  });

  it("kills a bridge that never gets ready and says how to install it", async () => {
    const { client } = fake("never-ready", { readyTimeoutMs: 300 });
    const started = client.start();
    await until(() => client.pid !== undefined, 2000, "spawn");
    const pid = client.pid;
    const error = (await started.catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("BRIDGE_UNAVAILABLE");
    expect(error.message).toMatch(/did not print its ready line within 300 ms and was killed/);
    expect(error.message).toContain("pip install memory-palace");
    await until(() => !alive(pid), 3000, "the child to die");
  });

  it("reports a missing command with the install hint", async () => {
    const client = new BridgeClient({
      launch: { command: "/nonexistent/memory-palace-bridge", args: [], env: {}, installHint: "install the bridge with `pip install memory-palace`" },
      readyTimeoutMs: 2000,
      logger: memoryLogger(),
      backoff: { initialMs: 60_000, maxMs: 60_000 },
    });
    clients.push(client);
    const error = (await client.call("echo", {}, { timeoutMs: 2000 }).catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("BRIDGE_UNAVAILABLE");
    expect(error.message).toMatch(/`\/nonexistent\/memory-palace-bridge` was not found/);
    expect(error.message).toContain("pip install memory-palace");
  });

  it("rejects pending calls on exit, restarts with backoff, and reports health", async () => {
    const health = { failures: [] as unknown[], cleared: 0 };
    const { client, starts } = fake("normal");
    client.setHealth({ reportFailure: (e) => health.failures.push(e), clearFailure: () => health.cleared++ });
    await client.start();
    const firstPid = client.pid;
    const pending = client.call("sleep", { ms: 10_000 }, { timeoutMs: 20_000 });
    const crash = client.call("crash", { code: 7 }, { timeoutMs: 5000 });
    for (const p of [pending, crash]) {
      const error = (await p.catch((e: unknown) => e)) as BridgeError;
      expect(error.code).toBe("BRIDGE_EXITED");
      expect(error.message).toMatch(/exited with code 7.*restarting/s);
    }
    expect(health.failures).toHaveLength(1);
    // The next call waits for the backoff restart instead of failing.
    expect(await client.call("echo", { again: true }, { timeoutMs: 5000 })).toEqual({ again: true });
    expect(client.pid).not.toBe(firstPid);
    expect(starts()).toBe(2);
    expect(health.cleared).toBe(1);
  });

  it("announces the served instances, with their database, on every ready line", async () => {
    const registry = [{ instance: "b" }, { instance: "b", database: "work" }];
    const { client, events } = fake("normal", { served: () => registry });
    const announced = (pid: number | undefined) =>
      events.filter((e) => e.event === "subscribed" && (e.data as { pid: number }).pid === pid).map((e) => e.data);
    await client.serve("c"); // not running: remembered, nothing is spawned
    expect(client.pid).toBeUndefined();
    await client.start();
    const firstPid = client.pid;
    await until(() => announced(firstPid).length === 3, 3000, "the first announcements");
    expect(announced(firstPid)).toEqual(expect.arrayContaining([
      { instance: "c", database: "default", pid: firstPid },
      { instance: "b", database: "default", pid: firstPid },
      { instance: "b", database: "work", pid: firstPid },
    ]));
    await client.serve("d", "life"); // ready: sent now, resolved once acknowledged
    expect(announced(firstPid)).toContainEqual({ instance: "d", database: "life", pid: firstPid });
    expect(client.served).toEqual(["b", "c", "d"]);

    registry.push({ instance: "e" }); // the registry learned e while the bridge was down
    await client.call("crash", { code: 1 }, { timeoutMs: 5000 }).catch(() => undefined);
    await client.call("echo", {}, { timeoutMs: 5000 });
    const secondPid = client.pid;
    expect(secondPid).not.toBe(firstPid);
    await until(() => announced(secondPid).length === 5 && client.unannounced === 0, 3000, "the announcements after the restart");
    expect(announced(secondPid).map((d) => JSON.stringify(d)).sort()).toEqual([
      { instance: "b", database: "default", pid: secondPid },
      { instance: "b", database: "work", pid: secondPid },
      { instance: "c", database: "default", pid: secondPid },
      { instance: "d", database: "life", pid: secondPid },
      { instance: "e", database: "default", pid: secondPid },
    ].map((d) => JSON.stringify(d)).sort());
    expect(client.served).toEqual(["b", "c", "d", "e"]);
  });

  it("retries a failed announcement with backoff until it holds", async () => {
    const { client, events, logger } = fake("normal", { served: () => [{ instance: "b" }] }, { FAKE_BRIDGE_FAIL_SUBSCRIBE: "3" });
    await client.start();
    // The fake sends its "subscribed" event before the reply: wait for the reply to be handled.
    await until(() => events.some((e) => e.event === "subscribed") && client.unannounced === 0, 5000, "the announcement to hold");
    expect(logger.lines.filter((l) => l.includes("could not ask the bridge to deliver messages for b; will retry"))).toHaveLength(3);
    expect(logger.lines.find((l) => l.includes("will retry"))).toContain("the database is down");
    expect(client.unannounced).toBe(0);
    expect(client.served).toEqual(["b"]);
    // A refusal of an explicit serve() rejects with the bridge's code; the retry still makes it hold.
    const { client: other, events: otherEvents } = fake("normal", {}, { FAKE_BRIDGE_FAIL_SUBSCRIBE: "1" });
    await other.start();
    const error = (await other.serve("c").catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("BACKEND_UNAVAILABLE");
    await until(() => otherEvents.some((e) => e.event === "subscribed") && other.served.includes("c"), 5000, "the retried announcement");
    expect(other.served).toEqual(["c"]);
  });

  it("drops an announcement the bridge refuses as invalid, and unserves", async () => {
    const { client, logger } = fake("normal");
    await client.start();
    const error = (await client.serve("").catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("INVALID_PARAMS");
    expect(client.unannounced).toBe(0);
    expect(logger.lines.some((l) => l.includes("not retrying"))).toBe(true);
    await client.serve("b");
    expect(client.served).toEqual(["b"]);
    await client.unserve("b");
    expect(client.served).toEqual([]);
  });

  it("times out a call and tells the bridge to cancel it", async () => {
    const { client, events } = fake("normal");
    await client.start(); // the 200 ms budget is for the call, not a start on a busy host
    const error = (await client.call("sleep", { ms: 5000 }, { timeoutMs: 200 }).catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("TIMEOUT");
    await until(() => events.some((e) => e.event === "cancelled"), 3000, "the _cancel");
    expect(events.find((e) => e.event === "cancelled")?.data).toEqual({ id: expect.any(Number), found: true });
    expect(await client.call("echo", { ok: 1 }, { timeoutMs: 2000 })).toEqual({ ok: 1 });
  });

  it("honours an abort signal and cancels in the bridge", async () => {
    const { client, events } = fake("normal");
    await client.start();
    const controller = new AbortController();
    const call = client.call("sleep", { ms: 5000 }, { timeoutMs: 10_000, signal: controller.signal });
    setTimeout(() => controller.abort(new Error("user pressed stop")), 50);
    const error = (await call.catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("ABORTED");
    await until(() => events.some((e) => e.event === "cancelled"), 3000, "the _cancel");
  });

  it("stops a stubborn bridge with SIGKILL within stop()", async () => {
    const { client, logger } = fake("stubborn");
    await client.start();
    const pid = client.pid;
    const started = Date.now();
    await client.stop();
    expect(alive(pid)).toBe(false);
    expect(Date.now() - started).toBeLessThan(4000);
    expect(logger.lines.some((l) => l.includes("ignored SIGTERM; sending SIGKILL"))).toBe(true);
    const error = (await client.call("echo", {}, { timeoutMs: 1000 }).catch((e: unknown) => e)) as BridgeError;
    expect(error.code).toBe("BRIDGE_STOPPED");
  });

  it("stops a well-behaved bridge with _shutdown", async () => {
    const { client, logger } = fake("normal");
    await client.start();
    const pid = client.pid;
    await client.stop();
    expect(alive(pid)).toBe(false);
    expect(logger.lines.some((l) => l.includes("SIGKILL"))).toBe(false);
  });

  it("sends stderr to the logger and never echoes stdout lines", async () => {
    const { client, logger } = fake("junk");
    await client.call("echo", {}, { timeoutMs: 5000 });
    expect(logger.lines.some((l) => l.includes("memory-palace bridge: fake bridge"))).toBe(true);
    expect(logger.lines.some((l) => l.includes("this is not json"))).toBe(false);
    expect(logger.lines.some((l) => l.includes("non-protocol output to stdout (1 lines"))).toBe(true);
  });
});
