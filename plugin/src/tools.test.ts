// Tool construction from the generated specs: catalogMode from `direct`, the tool set from the
// bridge's extensions, and the timeout from `synthesize`. The bridge is a recording stand-in.
import { describe, expect, it } from "vitest";
import { instanceFor, parseConfig } from "./config.js";
import { SessionRegistry } from "./sessions.js";
import { TOOL_SPECS, type ToolSpec } from "./tool-schemas.js";
import { createTool, createTools, enabledSpecs, timeoutFor, toolNames } from "./tools.js";

const config = parseConfig({ requestTimeoutMs: 2000, llmRequestTimeoutMs: 9000 });

function recordingBridge(extensions: string[] = []) {
  const calls: Array<{ method: string; params: Record<string, unknown>; timeoutMs: number; caller?: string }> = [];
  return {
    calls,
    extensions,
    call: async (method: string, params: Record<string, unknown>, options: { timeoutMs: number; caller?: string }) => {
      calls.push({ method, params, timeoutMs: options.timeoutMs, caller: options.caller });
      return { ok: true };
    },
  };
}

const stats = TOOL_SPECS.find((s) => s.name === "memory_stats") as ToolSpec;
const recall = TOOL_SPECS.find((s) => s.name === "memory_recall") as ToolSpec;

describe("tools from specs", () => {
  it("gives catalogMode direct-only exactly to specs with direct: true", () => {
    const deps = { bridge: recordingBridge(), registry: new SessionRegistry(), config };
    expect(stats.direct).toBe(false);
    expect(createTool(stats, deps, {}).catalogMode).toBeUndefined();
    expect(createTool({ ...stats, direct: true }, deps, {}).catalogMode).toBe("direct-only");
    expect(createTool({ ...recall, direct: false }, deps, {}).catalogMode).toBeUndefined();
  });

  it("keeps a spec's tools out until the bridge lists its extension", () => {
    const custom: ToolSpec[] = [stats, { ...stats, name: "x_tool", extension: "x" }];
    expect(enabledSpecs([], custom).map((s) => s.name)).toEqual(["memory_stats"]);
    expect(enabledSpecs(["x"], custom).map((s) => s.name)).toEqual(["memory_stats", "x_tool"]);
    const deps = { bridge: recordingBridge(["x"]), registry: new SessionRegistry(), config };
    expect(createTools(deps, {}, custom).map((t) => t.name)).toEqual(["memory_stats", "x_tool"]);
    expect(toolNames()).toEqual(TOOL_SPECS.map((s) => s.name));
  });

  it("uses the LLM timeout only for synthesize: true, and binds each call to the agent's instance", async () => {
    expect(timeoutFor({ synthesize: true }, config)).toBe(9000);
    expect(timeoutFor({ synthesize: false }, config)).toBe(2000);
    expect(timeoutFor(undefined, config)).toBe(2000);
    const bridge = recordingBridge();
    const mapped = parseConfig({ agents: { alice: "a" }, instanceId: "gw" });
    const registry = new SessionRegistry((agent) => instanceFor(mapped, agent));
    const deps = { bridge, registry, config };
    const tool = createTool(recall, deps, { sessionKey: "agent:main:s" });
    await tool.execute("1", { query: "q", synthesize: true });
    await tool.execute("2", { query: "q" });
    expect(bridge.calls.map((c) => [c.method, c.timeoutMs])).toEqual([["memory_recall", 9000], ["memory_recall", 2000]]);
    expect(tool.getExecutionTimeoutMs?.({ synthesize: true })).toBe(14_000);
    const message = TOOL_SPECS.find((s) => s.name === "palace_message") as ToolSpec;
    expect(bridge.calls.map((c) => c.caller)).toEqual(["gw", "gw"]);
    // A model naming another instance neither moves a route nor changes the caller: the bridge refuses the mismatch.
    await createTool(message, deps, { sessionKey: "agent:alice:palace-x", agentId: "alice" }).execute("3", { action: "send", from_instance: "b", to_instance: "b", content: "hi" });
    expect(bridge.calls.at(-1)).toMatchObject({ method: "message", caller: "a", params: { from_instance: "b" } });
    expect(registry.get("a")?.sessionKey).toBe("agent:alice:palace-x");
    expect(registry.get("b")).toBeUndefined();
  });
});
