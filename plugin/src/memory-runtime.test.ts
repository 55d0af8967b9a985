// OpenClaw's memory search runtime against the REAL Python bridge on a SQLite data dir: search is
// memory_recall as the agent's instance (a private memory of a is not found for bob), readFile
// opens a hit, status reports memory_stats, and close() stops only a bridge the manager started.
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { memoryLogger } from "./test-helpers.js";
import { BridgeClient } from "./bridge-client.js";
import { bridgeLaunch, parseConfig } from "./config.js";
import { createMemoryRuntime, idOfPath, pathOf, toHit } from "./memory-runtime.js";

const PYTHON = process.env.MEMORY_PALACE_PYTHON ?? "python3";
const dataDir = mkdtempSync(join(tmpdir(), "mp-runtime-"));
const config = parseConfig({ pythonPath: PYTHON, dataDir, agents: { alice: "a", bob: "b" } });
let client: BridgeClient;
let privateId = 0;
let sharedId = 0;

function newClient(): BridgeClient {
  const launch = bridgeLaunch(config);
  return new BridgeClient({ launch: { ...launch, env: { ...launch.env, MEMORY_PALACE_EMBEDDER: "hash" } }, readyTimeoutMs: 30_000, logger: memoryLogger() });
}

beforeAll(async () => {
  execFileSync(PYTHON, ["-c", "import memory_palace.bridge"], { stdio: "pipe" });
  client = newClient();
  const set = (params: Record<string, unknown>, caller: string) => client.call("memory_set", params, { timeoutMs: 30_000, caller }) as Promise<{ id: number }>;
  privateId = (await set({ content: "The vault code word is quokkalantern.", subject: "vault code", visibility: "private" }, "a")).id;
  sharedId = (await set({ content: "Deploys freeze on Fridays after 15:00.\nAsk the release owner first.", subject: "deploy freeze" }, "b")).id;
}, 60_000);

afterAll(async () => {
  await client.stop();
  rmSync(dataDir, { recursive: true, force: true });
});

describe("memory search runtime", () => {
  it("maps paths to ids and back, and memories to OpenClaw hits", () => {
    expect(idOfPath(pathOf(42))).toBe(42);
    for (const bad of ["MEMORY.md", "memory-palace/memory/0", "memory-palace/memory/4x", "memory-palace/memory/../1"]) expect(idOfPath(bad)).toBeUndefined();
    const hit = toHit({ id: 3, subject: "s", content: `a\nb ${"x".repeat(2000)}`, score: 0.5 });
    expect(hit).toMatchObject({ path: "memory-palace/memory/3", startLine: 1, endLine: 2, score: 0.5, source: "memory", citation: "memory_get 3" });
    expect(hit.snippet.length).toBeLessThanOrEqual(700);
    expect(hit.snippet.startsWith("s: a b")).toBe(true);
  });

  it("searches, reads and reports as the agent's instance, in the gateway's shared bridge", async () => {
    let released = 0;
    const runtime = createMemoryRuntime({ config, bridge: () => client, serviceRunning: () => true, release: async () => void released++ });
    const alice = (await runtime.getMemorySearchManager({ agentId: "alice" })).manager!;
    const hits = await alice.search("vault code word quokkalantern", { maxResults: 5 });
    expect(hits.map((h) => h.path)).toContain(pathOf(privateId));
    expect(hits.find((h) => h.path === pathOf(privateId))?.snippet).toContain("quokkalantern");
    expect(await alice.search("vault code word quokkalantern", { minScore: 1_000 })).toEqual([]);

    const status = alice.status();
    expect(status.provider).toBe("memory-palace");
    expect(status.custom.memoryPalace.instance).toBe("a");
    expect((status.custom.memoryPalace.stats as { active_memories: number }).active_memories).toBe(2);
    expect((status.custom.memoryPalace.bridge as { ok: boolean }).ok).toBe(true);

    const read = await alice.readFile({ relPath: pathOf(sharedId), from: 2, lines: 1 });
    expect(read).toMatchObject({ status: "ok", text: "Ask the release owner first.", from: 2, lines: 1 });
    expect(await alice.readFile({ relPath: "MEMORY.md" })).toMatchObject({ status: "not_found", text: "" });

    const bob = (await runtime.getMemorySearchManager({ agentId: "bob" })).manager!;
    expect(JSON.stringify(await bob.search("vault code word quokkalantern"))).not.toContain("quokkalantern");
    expect(await bob.readFile({ relPath: pathOf(privateId) })).toMatchObject({ status: "not_found" });
    expect((bob.status().custom.memoryPalace.stats as { active_memories: number }).active_memories).toBe(1);

    await alice.close();
    await runtime.closeAllMemorySearchManagers();
    expect(released).toBe(0); // the gateway's bridge outlives the managers
    expect(client.state).toBe("ready");
  }, 60_000);

  it("outside the gateway, the manager starts a bridge and close() stops it", async () => {
    const own = newClient();
    const runtime = createMemoryRuntime({ config, bridge: () => own, serviceRunning: () => false, release: () => own.stop() });
    const manager = (await runtime.getMemorySearchManager({ agentId: "bob" })).manager!;
    expect(own.state).toBe("ready");
    expect((await manager.search("deploy freeze Fridays")).map((h) => h.path)).toContain(pathOf(sharedId));
    await manager.close();
    expect(own.state).toBe("stopped");
  }, 60_000);

  it("reports a bridge that cannot start as an error, not a throw", async () => {
    const broken = parseConfig({ bridgeCommand: join(dataDir, "no-such-bridge"), readyTimeoutMs: 2000, requestTimeoutMs: 3000 });
    const dead = new BridgeClient({ launch: bridgeLaunch(broken), readyTimeoutMs: 2000, logger: memoryLogger(), backoff: { initialMs: 50, maxMs: 100 } });
    const runtime = createMemoryRuntime({ config: broken, bridge: () => dead, serviceRunning: () => false, release: () => dead.stop() });
    const got = await runtime.getMemorySearchManager({ agentId: "main" });
    expect(got.manager).toBeNull();
    expect(got.error).toMatch(/^Memory Palace: /);
    expect(dead.state).toBe("stopped");
  }, 30_000);
});
