// Registers the real entry against a hand-made mock of the SDK's OpenClawPluginApi and drives the
// tools, the hook, the service and the gateway method; the bridge is the fake bridge process.
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { AnyAgentTool, OpenClawPluginApi, OpenClawPluginServiceContext, OpenClawPluginToolContext } from "openclaw/plugin-sdk/plugin-entry";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { alive, memoryLogger, until } from "./test-helpers.js";
import { BridgeError } from "./errors.js";
import entry from "./index.js";
import { TOOL_SPECS } from "./tool-schemas.js";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const FAKE = join(ROOT, "plugin/test-support/fake-bridge.mjs");
const MANIFEST = JSON.parse(readFileSync(join(ROOT, "openclaw.plugin.json"), "utf8")) as {
  id: string;
  kind: string;
  contracts: { tools: string[] };
  configSchema: { additionalProperties: boolean; properties: Record<string, unknown> };
};

type Handler = (...args: unknown[]) => unknown;
type Factory = (ctx: OpenClawPluginToolContext) => AnyAgentTool | AnyAgentTool[] | null;
type Service = Parameters<OpenClawPluginApi["registerService"]>[0];

interface Recorded {
  factories: Array<{ factory: Factory; opts: unknown }>;
  hooks: Map<string, Handler>;
  services: Service[];
  methods: Map<string, Handler>;
  memory: unknown[];
  events: Array<{ text: string; opts: Record<string, unknown> }>;
  beats: Array<Record<string, unknown>>;
  cli: unknown[];
}

function mockApi(pluginConfig: Record<string, unknown>): { api: OpenClawPluginApi; rec: Recorded; logger: ReturnType<typeof memoryLogger> } {
  const rec: Recorded = { factories: [], hooks: new Map(), services: [], methods: new Map(), memory: [], events: [], beats: [], cli: [] };
  const logger = memoryLogger();
  const partial: Partial<OpenClawPluginApi> = {
    id: "memory-palace",
    // A data dir per test keeps each test on its own process-wide host.
    pluginConfig: { dataDir: currentDataDir, ...pluginConfig },
    logger,
    registrationMode: "full",
    registerTool: ((tool: AnyAgentTool | Factory, opts?: unknown) => {
      rec.factories.push({ factory: typeof tool === "function" ? tool : () => tool, opts });
    }) as OpenClawPluginApi["registerTool"],
    on: ((name: string, handler: Handler) => {
      rec.hooks.set(name, handler);
    }) as OpenClawPluginApi["on"],
    registerService: (service) => {
      rec.services.push(service);
    },
    registerGatewayMethod: ((method: string, handler: Handler) => {
      rec.methods.set(method, handler);
    }) as OpenClawPluginApi["registerGatewayMethod"],
    registerMemoryCapability: (capability) => {
      rec.memory.push(capability);
    },
    registerCli: (_registrar, opts) => {
      rec.cli.push(opts);
    },
    runtime: {
      system: {
        enqueueSystemEvent: (text: string, opts: Record<string, unknown>) => {
          rec.events.push({ text, opts });
          return true;
        },
        requestHeartbeat: (opts: Record<string, unknown>) => {
          rec.beats.push(opts);
        },
      },
    } as unknown as OpenClawPluginApi["runtime"],
  };
  return { api: partial as OpenClawPluginApi, rec, logger };
}

function tools(rec: Recorded, ctx: Partial<OpenClawPluginToolContext>): Map<string, AnyAgentTool> {
  const made = rec.factories[0]?.factory(ctx as OpenClawPluginToolContext);
  const list = Array.isArray(made) ? made : made ? [made] : [];
  return new Map(list.map((t) => [t.name, t]));
}

function serviceCtx(health: { failures: unknown[] }): OpenClawPluginServiceContext {
  return {
    config: {},
    stateDir: currentDataDir,
    logger: memoryLogger(),
    serviceHealth: { reportFailure: (e: unknown) => health.failures.push(e), clearFailure: () => {} },
  } as unknown as OpenClawPluginServiceContext;
}

function sessions(rec: Recorded): Record<string, unknown> {
  let payload: Record<string, unknown> = {};
  rec.methods.get("memoryPalace.sessions")?.({ params: {}, respond: (ok: boolean, p: Record<string, unknown>) => { expect(ok).toBe(true); payload = p; } });
  return payload;
}

let startsLog = "";
let currentDataDir = "";
const stops: Array<() => unknown> = [];

beforeEach(() => {
  currentDataDir = mkdtempSync(join(tmpdir(), "mp-entry-"));
  startsLog = join(currentDataDir, "starts.log");
  process.env.FAKE_BRIDGE_LOG = startsLog;
});

afterEach(async () => {
  for (const stop of stops.splice(0)) await stop();
  delete process.env.FAKE_BRIDGE_LOG;
  delete process.env.FAKE_BRIDGE_EXTENSIONS;
  rmSync(currentDataDir, { recursive: true, force: true });
});

describe("plugin entry", () => {
  it("matches the manifest: id, memory kind, strict config schema", () => {
    expect(entry.id).toBe(MANIFEST.id);
    expect(MANIFEST.kind).toBe("memory");
    expect(MANIFEST.configSchema.additionalProperties).toBe(false);
    for (const key of ["bridgeCommand", "pythonPath", "instanceId", "agents", "token", "dataDir", "databaseUrl", "requestTimeoutMs", "instanceRoutes", "autoRecall", "autoCapture"]) {
      expect(MANIFEST.configSchema.properties).toHaveProperty(key);
    }
  });

  it("declares every manifest tool; the bridge's extensions decide which the factory returns", async () => {
    process.env.FAKE_BRIDGE_EXTENSIONS = "db_manager";
    const { api, rec } = mockApi({ bridgeCommand: FAKE });
    entry.register(api);
    expect((rec.factories[0]?.opts as { names: string[] }).names.sort()).toEqual([...MANIFEST.contracts.tools].sort());
    const extensionTools = TOOL_SPECS.filter((s) => s.extension === "db_manager").map((s) => s.name);
    expect(extensionTools.length).toBeGreaterThan(0);
    const before = [...tools(rec, {}).keys()];
    expect(before).toContain("memory_set");
    for (const name of extensionTools) expect(before).not.toContain(name); // not ready yet: no extensions
    await rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    await until(() => (sessions(rec).bridge as { state: string }).state === "ready", 5000, "ready");
    const made = tools(rec, { sessionKey: "agent:main:main", agentId: "main" });
    expect([...made.keys()].sort()).toEqual([...MANIFEST.contracts.tools].sort());
    expect((sessions(rec).bridge as { extensions: string[] }).extensions).toEqual(["db_manager"]);
    for (const tool of made.values()) {
      expect(tool.label).toMatch(/^Memory Palace: /);
      expect(tool.description.length).toBeGreaterThan(20);
      expect((tool.parameters as { type?: string }).type).toBe("object");
    }
    const recall = made.get("memory_recall")?.parameters as { properties: Record<string, { default?: unknown }> };
    expect(recall.properties.limit?.default).toBe(20);
    expect(recall.properties).toHaveProperty("database");
    for (const spec of TOOL_SPECS) expect(made.get(spec.name)?.catalogMode).toBe(spec.direct ? "direct-only" : undefined);
    expect(made.get("palace_message")?.catalogMode).toBe("direct-only");
    expect(made.get("memory_search")?.description).toContain("Same as memory_recall");
    expect([...rec.hooks.keys()]).toEqual(["before_tool_call", "before_prompt_build", "agent_end"]);
    expect(rec.services.map((s) => s.id)).toEqual(["memory-palace-bridge"]);
    expect([...rec.methods.keys()]).toEqual(["memoryPalace.sessions", "memoryPalace.status", "memoryPalace.search"]);
    expect(rec.cli).toEqual([{ descriptors: [{ name: "memory-palace", description: expect.stringContaining("Memory Palace"), hasSubcommands: true }] }]);
    const prompt = (rec.memory[0] as { promptBuilder: (p: { availableTools: Set<string> }) => string[] }).promptBuilder({ availableTools: new Set(made.keys()) });
    expect(prompt.join("\n")).toContain("memory_search");
    const runtime = (rec.memory[0] as { runtime?: Record<string, unknown> }).runtime;
    expect(typeof runtime?.getMemorySearchManager).toBe("function");
    expect(typeof runtime?.resolveMemoryBackendConfig).toBe("function");
  });

  it("leaves the extension tools out when the bridge's ready line lists no extension", async () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE });
    entry.register(api);
    await rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    await until(() => (sessions(rec).bridge as { state: string }).state === "ready", 5000, "ready");
    const names = [...tools(rec, {}).keys()];
    expect(names).not.toContain("memory_list_databases");
    expect(names).toContain("memory_set");
    expect(names).toHaveLength(TOOL_SPECS.filter((s) => s.extension === null).length);
  });

  it("in a cli-metadata load registers only the CLI and never touches the (unavailable) runtime", () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE });
    const unavailable = new Proxy({}, { get: (_t, p) => { if (typeof p === "symbol") return undefined; throw new Error(`runtime.${String(p)} is unavailable`); } });
    entry.register({ ...api, registrationMode: "cli-metadata", runtime: unavailable } as OpenClawPluginApi);
    expect(rec.cli).toHaveLength(1);
    expect(rec.factories).toHaveLength(0);
    expect(rec.services).toHaveLength(0);
    expect(rec.methods.size).toBe(0);
  });

  it("refuses the removed databaseManager key by name", () => {
    expect(() => entry.register(mockApi({ databaseManager: true }).api)).toThrow(/unknown key databaseManager/);
  });

  it("rejects unknown config keys by name", () => {
    const { api } = mockApi({ bridgeComand: "x" });
    expect(() => entry.register(api)).toThrow(/unknown key bridgeComand/);
  });

  it("never spawns in register(); the service starts one bridge and stops it", async () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE });
    entry.register(api);
    entry.register(mockApi({ bridgeCommand: FAKE }).api); // OpenClaw registers more than once
    await new Promise((r) => setTimeout(r, 200));
    expect(existsSync(startsLog)).toBe(false);
    const service = rec.services[0] as Service;
    const health = { failures: [] as unknown[] };
    await service.start(serviceCtx(health));
    await until(() => existsSync(startsLog), 5000, "the bridge start");
    const pid = Number(readFileSync(startsLog, "utf8").trim());
    await until(() => (sessions(rec).bridge as { state: string }).state === "ready", 5000, "ready");
    await service.stop?.(serviceCtx(health));
    expect(alive(pid)).toBe(false);
    expect(health.failures).toEqual([]);
  });

  it("shares one bridge between registrations: a later registration's tools reach the started service", async () => {
    const first = mockApi({ bridgeCommand: FAKE, agents: { bob: "b" } });
    const second = mockApi({ bridgeCommand: FAKE, agents: { bob: "b" } });
    entry.register(first.api);
    entry.register(second.api);
    await first.rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => first.rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    await tools(second.rec, { sessionKey: "agent:bob:palace-b" }).get("memory_set")?.execute("1", { content: "x" });
    expect(readFileSync(startsLog, "utf8").trim().split("\n")).toHaveLength(1);
    const snap = sessions(first.rec) as { sessions: Record<string, { sessionKey: string }> };
    expect(snap.sessions.b?.sessionKey).toBe("agent:bob:palace-b");
  });

  it("persists learned routes and their databases under stateDir, so a reload serves and wakes the right session", async () => {
    // A file from before this version also has `channels`: it is ignored, not fatal.
    mkdirSync(join(currentDataDir, "memory-palace"), { recursive: true });
    writeFileSync(join(currentDataDir, "memory-palace/sessions.json"), JSON.stringify({
      sessions: {
        old: { sessionKey: "agent:old:palace-old", agentId: "old", lastSeen: 1, source: "tool" },
        // The model of agent main once named b; b is bob's instance now, so this route is dropped.
        b: { sessionKey: "agent:main:palace-b", agentId: "main", lastSeen: 1, source: "tool" },
      },
      count: 2,
      channels: { deploys: ["old"] },
    }));
    const agents = { alice: "a", bob: "b" };
    const first = mockApi({ bridgeCommand: FAKE, agents });
    entry.register(first.api);
    await first.rec.services[0]?.start(serviceCtx({ failures: [] }));
    const made = tools(first.rec, { sessionKey: "agent:bob:palace-b", agentId: "bob" });
    await made.get("memory_set")?.execute("1", { content: "x", database: "work" });
    await first.rec.services[0]?.stop?.(serviceCtx({ failures: [] }));
    const saved = JSON.parse(readFileSync(join(currentDataDir, "memory-palace/sessions.json"), "utf8")) as { sessions: Record<string, { sessionKey: string; databases: string[] }> };
    expect(saved.sessions.b).toMatchObject({ sessionKey: "agent:bob:palace-b", databases: ["work"] });
    expect(saved.sessions.old?.sessionKey).toBe("agent:old:palace-old");
    expect(saved).not.toHaveProperty("channels");

    const second = mockApi({ bridgeCommand: FAKE, agents }); // the reloaded plugin: a new host and bridge
    entry.register(second.api);
    await second.rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => second.rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    // The fake bridge serves only announced instances: b is served because the restored registry announced it.
    await until(() => (sessions(second.rec).served as string[]).includes("b"), 5000, "b served again");
    await tools(second.rec, { sessionKey: "agent:alice:palace-a" }).get("palace_message")?.execute("3", { action: "send", to_instance: "b", subject: "after reload", database: "work" });
    await until(() => second.rec.beats.length === 1, 5000, "the wake after reload");
    expect(second.rec.events[0]?.opts).toMatchObject({ sessionKey: "agent:bob:palace-b", agentId: "bob", contextKey: "memory-palace:work:b:1" });
    const snap = sessions(second.rec) as { served: string[]; bridge: { unannounced: number } };
    expect(snap.served).toEqual(expect.arrayContaining(["a", "b", "old"]));
    expect(snap.bridge.unannounced).toBe(0);
  });

  it("restores learned routes before a tool call can start the bridge, so a replayed message wakes the learned session", async () => {
    mkdirSync(join(currentDataDir, "memory-palace"), { recursive: true });
    writeFileSync(join(currentDataDir, "memory-palace/sessions.json"), JSON.stringify({
      sessions: { b: { sessionKey: "agent:bob:palace-b", agentId: "bob", lastSeen: 1, source: "tool", databases: [] } },
    }));
    const { api, rec } = mockApi({ bridgeCommand: FAKE, agents: { alice: "a", bob: "b" } });
    (api.runtime as unknown as { state: { resolveStateDir: () => string } }).state = { resolveStateDir: () => currentDataDir };
    entry.register(api);
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    // No service start yet (a gateway restart, a request already waiting): the tool call starts the bridge.
    await tools(rec, { sessionKey: "agent:alice:palace-a", agentId: "alice" }).get("palace_message")?.execute("1", { action: "send", to_instance: "b", subject: "early" });
    await until(() => rec.beats.length === 1, 5000, "the wake");
    expect(rec.events[0]?.opts).toMatchObject({ sessionKey: "agent:bob:palace-b", agentId: "bob" });
  });

  it("validates params before sending, applies defaults, returns compact JSON, and throws failures", async () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE });
    entry.register(api);
    const made = tools(rec, { sessionKey: "agent:main:s1", agentId: "main" });
    const set = made.get("memory_set") as AnyAgentTool;
    const bad = (await set.execute("t1", { content: "x", foundational: "maybe", bogus: true }).catch((e: unknown) => e)) as BridgeError;
    expect(bad).toBeInstanceOf(BridgeError);
    expect(bad.code).toBe("INVALID_PARAMS");
    expect(bad.message).toContain("unknown parameter bogus; expected one of content,");
    expect(bad.message).toContain("parameter foundational must be boolean");
    expect(existsSync(startsLog)).toBe(false); // nothing was sent, so no bridge was started
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    const ok = await set.execute("t2", { content: "the sky is blue", subject: null });
    const text = (ok.content[0] as { text: string }).text;
    expect(text).not.toContain("\n");
    const echoed = JSON.parse(text) as { method: string; params: Record<string, unknown> };
    expect(echoed.method).toBe("memory_set");
    expect(echoed.params).toMatchObject({ content: "the sky is blue", memory_type: "fact", project: "life", foundational: false });
    const missing = made.get("memory_get") as AnyAgentTool;
    await expect(missing.execute("t3", {})).rejects.toThrow(/memory_ids/);
  });

  it("before_tool_call never throws and learns the caller's session for its agent's instance only", () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE, agents: { bob: "b" } });
    entry.register(api);
    const hook = rec.hooks.get("before_tool_call") as Handler;
    const hostile = { get database(): string { throw new Error("boom"); } };
    expect(hook({ toolName: "memory_set", params: hostile }, { sessionKey: "agent:main:x" })).toBeUndefined();
    expect(hook({ toolName: "memory_set", params: null }, {})).toBeUndefined();
    expect(hook({ toolName: "memory_set", params: { instance_id: "b", content: "x" } }, { sessionKey: "agent:main:b", agentId: "main" })).toBeUndefined();
    expect(hook({ toolName: "memory_set", params: { content: "x" } }, { sessionKey: "agent:bob:s2", agentId: "bob" })).toBeUndefined();
    const snap = sessions(rec) as { sessions: Record<string, { sessionKey: string }> };
    expect(snap.sessions.b?.sessionKey).toBe("agent:bob:s2");
  });

  it("binds every call to the agent's instance: another agent's instance is refused and takes no wake", async () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE, agents: { alice: "a", bob: "b" } });
    entry.register(api);
    await rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    // Both mapped instances are served from the start, before any tool call.
    await until(() => ["a", "b"].every((i) => (sessions(rec).served as string[]).includes(i)), 5000, "a and b served");
    const alice = tools(rec, { sessionKey: "agent:alice:main", agentId: "alice" });
    const spoof = (await alice.get("palace_message")?.execute("1", { action: "get", instance_id: "b" }).catch((e: unknown) => e)) as BridgeError;
    expect(spoof).toBeInstanceOf(BridgeError);
    expect(spoof.code).toBe("PERMISSION_DENIED");
    const own = await alice.get("memory_set")?.execute("2", { content: "alice's note" });
    expect(JSON.parse((own?.content[0] as { text: string }).text)).toMatchObject({ caller: "a", params: { instance_id: "a" } });
    await alice.get("palace_message")?.execute("3", { action: "send", to_instance: "b", subject: "for bob" });
    await until(() => rec.beats.length === 1, 5000, "bob's wake");
    expect(rec.events.map((e) => e.opts.sessionKey)).toEqual(["agent:bob:main"]);
    const snap = sessions(rec) as { sessions: Record<string, { sessionKey: string }> };
    expect(snap.sessions.b?.sessionKey).toBe("agent:bob:main");
    expect(snap.sessions.a?.sessionKey).toBe("agent:alice:main");
  });

  it("runs auto-recall and auto-capture as the agent's instance and shows them in memoryPalace.sessions", async () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE, agents: { alice: "a" } });
    entry.register(api);
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    const recall = rec.hooks.get("before_prompt_build") as Handler;
    // The fake bridge finds nothing: no injection, and the reason is recorded.
    expect(await recall({ prompt: "what about the deploy key?", messages: [] }, { agentId: "alice", sessionKey: "agent:alice:main", trigger: "user" })).toBeUndefined();
    expect(await recall({ prompt: "heartbeat" }, { agentId: "alice", sessionKey: "agent:alice:hb", trigger: "heartbeat" })).toBeUndefined();
    const end = rec.hooks.get("agent_end") as Handler;
    expect(end({ success: true, messages: [
      { role: "user", content: "Remember that the standup moved to 10:30." },
      { role: "assistant", content: [{ type: "text", text: "Noted, the standup is at 10:30 now." }] },
    ] }, { agentId: "alice", sessionKey: "agent:alice:main", trigger: "user" })).toBeUndefined();
    type Auto = { injections: Record<string, { instance: string; skipped?: string }>; captures: Record<string, { instance: string; ids: number[] }> };
    await until(() => ((sessions(rec).auto as Auto).captures["agent:alice:main"]?.ids.length ?? 0) === 2, 5000, "the capture");
    const auto = sessions(rec).auto as Auto;
    expect(auto.injections["agent:alice:main"]).toMatchObject({ instance: "a", skipped: "nothing scored >= 0.3" });
    expect(auto.injections["agent:alice:hb"]?.skipped).toBe("trigger heartbeat");
    expect(auto.captures["agent:alice:main"]).toMatchObject({ instance: "a", ids: [1, 2] });
  });

  it("registers no conversation hook when both are turned off", () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE, autoRecall: false, autoCapture: { enabled: false } });
    entry.register(api);
    expect([...rec.hooks.keys()]).toEqual(["before_tool_call"]);
  });

  it("passes the token to the bridge in its env, never logs or reports it, and shows the identity", async () => {
    const secret = "mpt_0123456789ab_s3cr3t-t0ken-value-never-shown";
    const { api, rec, logger } = mockApi({ bridgeCommand: FAKE, token: secret, instanceId: "token-owner" });
    entry.register(api);
    await rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    await until(() => (sessions(rec).bridge as { state: string }).state === "ready", 5000, "ready");
    const snap = sessions(rec);
    expect((snap.bridge as { identity: unknown }).identity).toEqual({ instance: "token-owner", role: "writer", verified: true });
    expect((snap.bridge as { tokenConfigured: boolean }).tokenConfigured).toBe(true);
    expect(JSON.stringify(snap)).not.toContain(secret);
    expect(logger.lines.join("\n")).toContain("identity token-owner (writer, verified by token)");
    expect(logger.lines.join("\n")).not.toContain("s3cr3t");
  });

  it("routes a sent message to the recipient's session, serves discovered instances, and dedupes", async () => {
    const { api, rec } = mockApi({ bridgeCommand: FAKE, instanceRoutes: { ops: "agent:ops:main" } });
    entry.register(api);
    await rec.services[0]?.start(serviceCtx({ failures: [] }));
    stops.push(() => rec.services[0]?.stop?.(serviceCtx({ failures: [] })));
    // No agents config: each agent acts as the instance of its own name.
    const b = tools(rec, { sessionKey: "agent:b:palace-b", agentId: "b" });
    const a = tools(rec, { sessionKey: "agent:a:palace-a", agentId: "a" });
    await b.get("memory_set")?.execute("1", { content: "b was here", instance_id: "b" });
    await a.get("palace_message")?.execute("2", { action: "send", from_instance: "a", to_instance: "b", subject: "deploy\u0007 done", content: "secret content" });
    await until(() => rec.beats.length === 1, 5000, "the wake");
    expect(rec.events).toHaveLength(1);
    expect(rec.events[0]?.opts).toEqual({ sessionKey: "agent:b:palace-b", agentId: "b", contextKey: "memory-palace:default:b:1" });
    expect(rec.events[0]?.text).toContain('"deploy done"');
    expect(rec.events[0]?.text).not.toContain("secret content");
    expect(rec.beats[0]).toMatchObject({ intent: "immediate", sessionKey: "agent:b:palace-b", reason: "memory-palace:new_message" });
    const snap = sessions(rec) as { served: string[]; sessions: Record<string, unknown>; wakes: { recent: unknown[] } };
    expect(snap).not.toHaveProperty("listening");
    expect(snap.served).toEqual(["a", "b", "ops"]);
    expect(Object.keys(snap.sessions).sort()).toEqual(["a", "b", "ops"]);
    expect(snap.wakes.recent).toHaveLength(1);
  });
});
