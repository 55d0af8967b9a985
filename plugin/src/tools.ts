/**
 * Agent tools: one per registry tool (tool-schemas.ts), each validated with typebox/value before
 * it reaches the bridge. Which tools exist follows the bridge: a tool of an extension appears once
 * the bridge's ready line lists that extension. execute() forwards to the bridge and returns
 * compact JSON text; every failure throws. Each call runs as its agent's instance (the request's
 * `caller`, config `agents`) and teaches the session registry which session speaks for it.
 */
import type { AnyAgentTool } from "openclaw/plugin-sdk/plugin-entry";
import { Value } from "typebox/value";
import type { BridgeClient } from "./bridge-client.js";
import type { PluginConfig } from "./config.js";
import { BridgeError, PLUGIN_CODES } from "./errors.js";
import type { SessionRegistry } from "./sessions.js";
import { TOOL_SPECS, type ToolSpec } from "./tool-schemas.js";

/** Grace on top of our own timeout so OpenClaw's budget never fires before our cancel does. */
const HARNESS_GRACE_MS = 5_000;

export interface ToolDeps {
  readonly bridge: Pick<BridgeClient, "call" | "extensions">;
  readonly registry: SessionRegistry;
  readonly config: PluginConfig;
}

export interface CallerContext {
  readonly sessionKey?: string;
  readonly agentId?: string;
}

/** The tools a bridge with these extensions serves (before its ready line: no extensions). */
export function enabledSpecs(extensions: readonly string[], specs: readonly ToolSpec[] = TOOL_SPECS): ToolSpec[] {
  return specs.filter((spec) => spec.extension === null || extensions.includes(spec.extension));
}

/** Every tool the factory may return (the manifest's contracts.tools). */
export function toolNames(): string[] {
  return TOOL_SPECS.map((spec) => spec.name);
}

/** Coerce, default and check params; throws INVALID_PARAMS naming the parameters at fault. */
export function validateParams(spec: ToolSpec, raw: unknown): Record<string, unknown> {
  if (raw !== undefined && raw !== null && (typeof raw !== "object" || Array.isArray(raw))) {
    throw new BridgeError(PLUGIN_CODES.invalidParams, `${spec.name}: params must be a JSON object`);
  }
  // Models often send null for "not given"; the bridge treats a missing value the same way.
  const given = Object.entries((raw ?? {}) as Record<string, unknown>).filter(([, v]) => v !== null && v !== undefined);
  const cloned: unknown = structuredClone(Object.fromEntries(given));
  const params = Value.Default(spec.parameters, Value.Convert(spec.parameters, cloned));
  if (!Value.Check(spec.parameters, params)) {
    const known = Object.keys((spec.parameters as { properties?: object }).properties ?? {});
    const problems = [...Value.Errors(spec.parameters, params)]
      .filter((e) => e.keyword !== "boolean")
      .slice(0, 3)
      .map((e) => {
        if (e.keyword === "additionalProperties") {
          const extra = (e.params as { additionalProperties?: string[] }).additionalProperties ?? [];
          return `unknown parameter ${extra.join(", ")}; expected one of ${known.join(", ")}`;
        }
        const where = e.instancePath ? `parameter ${e.instancePath.slice(1).replace(/\//g, ".")}` : "params";
        return `${where} ${e.message}`;
      });
    throw new BridgeError(PLUGIN_CODES.invalidParams, `${spec.name}: ${problems.join("; ")}`);
  }
  return params as Record<string, unknown>;
}

/** LLM-backed calls (`synthesize: true`) get the longer budget. */
export function timeoutFor(params: unknown, config: PluginConfig): number {
  const synth = !!params && typeof params === "object" && (params as Record<string, unknown>).synthesize === true;
  return synth ? config.llmRequestTimeoutMs : config.requestTimeoutMs;
}

export function createTool(spec: ToolSpec, deps: ToolDeps, caller: CallerContext): AnyAgentTool {
  return {
    name: spec.name,
    label: spec.label,
    description: spec.description,
    parameters: spec.parameters,
    ...(spec.direct ? { catalogMode: "direct-only" as const } : {}),
    getExecutionTimeoutMs: (args: unknown) => timeoutFor(args, deps.config) + HARNESS_GRACE_MS,
    async execute(_toolCallId: string, rawParams: unknown, signal?: AbortSignal) {
      const params = validateParams(spec, rawParams);
      deps.registry.noteToolCall(params, caller.sessionKey, caller.agentId);
      // Bound to the agent's instance: a parameter naming another instance is refused by the bridge.
      const instance = deps.registry.instanceOfSession(caller.sessionKey, caller.agentId);
      const result = await deps.bridge.call(spec.method, params, { timeoutMs: timeoutFor(params, deps.config), signal, caller: instance });
      return {
        content: [{ type: "text" as const, text: JSON.stringify(result ?? null) }],
        details: { tool: spec.name, result },
      };
    },
  };
}

export function createTools(deps: ToolDeps, caller: CallerContext, specs: readonly ToolSpec[] = TOOL_SPECS): AnyAgentTool[] {
  return enabledSpecs(deps.bridge.extensions, specs).map((spec) => createTool(spec, deps, caller));
}
