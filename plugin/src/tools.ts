/**
 * Agent tools: one per registry tool (tool-schemas.ts), each validated with typebox/value before
 * it reaches the bridge. execute() forwards to the bridge and returns compact JSON text; every
 * failure throws. Calls also teach the session registry which session speaks for which instance.
 */
import type { AnyAgentTool } from "openclaw/plugin-sdk/plugin-entry";
import { Value } from "typebox/value";
import type { BridgeClient } from "./bridge-client.js";
import type { PluginConfig } from "./config.js";
import { BridgeError, PLUGIN_CODES } from "./errors.js";
import { instanceChannel, type SessionRegistry } from "./sessions.js";
import { TOOL_SPECS, type ToolSpec } from "./tool-schemas.js";

/**
 * Kept model-visible even in tool-search mode: the tools the wake text and the memory prompt
 * name. The rest stay reachable through tool_search/tool_call (see docs/openclaw.md).
 */
export const DIRECT_TOOLS: ReadonlySet<string> = new Set([
  "palace_message", "memory_search", "memory_recall", "memory_set", "memory_get",
]);

/** Grace on top of our own timeout so OpenClaw's budget never fires before our cancel does. */
const HARNESS_GRACE_MS = 5_000;

export interface ToolDeps {
  readonly bridge: BridgeClient;
  readonly registry: SessionRegistry;
  readonly config: PluginConfig;
}

export interface CallerContext {
  readonly sessionKey?: string;
  readonly agentId?: string;
}

export function enabledSpecs(config: PluginConfig): ToolSpec[] {
  return TOOL_SPECS.filter((spec) => spec.extension === null || config.databaseManager);
}

export function toolNames(config: PluginConfig): string[] {
  return enabledSpecs(config).map((spec) => spec.name);
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

function timeoutFor(spec: ToolSpec, params: Record<string, unknown>, config: PluginConfig): number {
  const llm = spec.llmBacked || params.synthesize === true;
  return llm ? config.llmRequestTimeoutMs : config.requestTimeoutMs;
}

/** After a successful palace_message subscribe/unsubscribe, keep channel routing in step. */
async function trackChannel(deps: ToolDeps, params: Record<string, unknown>): Promise<void> {
  const { action, channel } = params;
  const instance = (params.instance_id as string | undefined) ?? deps.config.instanceId;
  if (typeof channel !== "string" || !channel || !instance) return;
  if (action === "subscribe") {
    deps.registry.subscribeChannel(instance, channel);
    await deps.bridge.subscribe(instanceChannel(channel));
  } else if (action === "unsubscribe" && deps.registry.unsubscribeChannel(instance, channel)) {
    await deps.bridge.unsubscribe(instanceChannel(channel));
  }
}

export function createTool(spec: ToolSpec, deps: ToolDeps, caller: CallerContext): AnyAgentTool {
  return {
    name: spec.name,
    label: spec.label,
    description: spec.description,
    parameters: spec.parameters,
    ...(DIRECT_TOOLS.has(spec.name) ? { catalogMode: "direct-only" as const } : {}),
    getExecutionTimeoutMs: (args: unknown) => {
      const synth = !!args && typeof args === "object" && (args as Record<string, unknown>).synthesize === true;
      const base = spec.llmBacked || synth ? deps.config.llmRequestTimeoutMs : deps.config.requestTimeoutMs;
      return base + HARNESS_GRACE_MS;
    },
    async execute(_toolCallId: string, rawParams: unknown, signal?: AbortSignal) {
      const params = validateParams(spec, rawParams);
      deps.registry.noteToolCall(spec.name, params, caller.sessionKey, caller.agentId);
      const result = await deps.bridge.call(spec.method, params, {
        timeoutMs: timeoutFor(spec, params, deps.config),
        signal,
      });
      if (spec.name === "palace_message") {
        await trackChannel(deps, params).catch((error: unknown) => {
          throw new BridgeError("TOOL_ERROR", `palace_message ${String(params.action)} succeeded, but the push channel could not be updated: ${String(error)}`, { cause: error });
        });
      }
      return {
        content: [{ type: "text" as const, text: JSON.stringify(result ?? null) }],
        details: { tool: spec.name, result },
      };
    },
  };
}

export function createTools(deps: ToolDeps, caller: CallerContext): AnyAgentTool[] {
  return enabledSpecs(deps.config).map((spec) => createTool(spec, deps, caller));
}
