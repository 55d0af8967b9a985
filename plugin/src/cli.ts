/**
 * The plugin's own CLI namespace, `openclaw memory-palace status|search` (OpenClaw's
 * `openclaw memory ...` belongs to the bundled memory-core and never asks a third-party memory
 * plugin in 2026.9.6; docs/openclaw.md).
 *
 * Thin on both ends. The CLI process only calls a gateway method of the running gateway
 * (`memoryPalace.status`, `memoryPalace.search`, via the SDK's callGatewayFromCli, the same
 * transport and flags as `openclaw gateway call`) and prints the answer. The gateway's handler
 * only forwards to the gateway's bridge as the agent's mapped instance (`caller`): memory_recall,
 * memory_stats, _health. No second bridge is started: a bridge serves the instances it runs as,
 * so a short-lived CLI bridge would replay (and mark delivered) the messages the gateway has yet
 * to wake its sessions for.
 */
import type { OpenClawPluginApi } from "openclaw/plugin-sdk/plugin-entry";
import { BridgeError } from "./errors.js";
import { instanceFor, type PluginConfig } from "./config.js";

export const CLI_ROOT = "memory-palace";
export const CLI_DESCRIPTION = "Memory Palace: bridge status and recall as an agent's instance (through the running gateway)";
export const STATUS_METHOD = "memoryPalace.status";
export const SEARCH_METHOD = "memoryPalace.search";
const DEFAULT_LIMIT = 10;
const MAX_LIMIT = 50;

type Respond = (ok: boolean, payload?: unknown, error?: { code: string; message: string; details?: unknown }) => void;

/** What the gateway methods need from the live host. */
export interface OperatorDeps {
  readonly config: PluginConfig;
  readonly bridge: () => {
    readonly state: string;
    readonly pid?: number;
    readonly served: readonly string[];
    readonly identity?: unknown;
    readonly identityError?: string;
    call(method: string, params: Record<string, unknown>, options: { timeoutMs: number; caller?: string }): Promise<unknown>;
  };
  /** OpenClaw's agent ids from its own config (agents.entries / agents.list), if any. */
  readonly openclawAgents: () => readonly string[];
}

function reason(error: unknown): { code: string; message: string } {
  if (error instanceof BridgeError) return { code: error.code, message: error.message };
  return { code: "INTERNAL_ERROR", message: error instanceof Error ? error.message : String(error) };
}

/** Every agent worth listing: mapped ones, OpenClaw's configured ones, and main. */
export function agentsOf(deps: OperatorDeps): string[] {
  return [...new Set([...Object.keys(deps.config.agents), ...deps.openclawAgents(), "main"])].sort();
}

/** `memoryPalace.status`: the bridge, its database, and per agent the instance and its counts. */
export async function statusReport(deps: OperatorDeps): Promise<Record<string, unknown>> {
  const bridge = deps.bridge();
  const timeoutMs = deps.config.requestTimeoutMs;
  const health = (await bridge.call("_health", {}, { timeoutMs }).catch((error: unknown) => ({ error: reason(error) }))) as Record<string, unknown>;
  const agents = await Promise.all(agentsOf(deps).map(async (agent) => {
    const instance = instanceFor(deps.config, agent);
    const how = Object.hasOwn(deps.config.agents, agent) ? "agents" : deps.config.instanceId ? "instanceId" : "agent id";
    try {
      const stats = (await bridge.call("memory_stats", {}, { timeoutMs, caller: instance })) as Record<string, unknown>;
      return { agent, instance, mappedBy: how, stats };
    } catch (error) {
      return { agent, instance, mappedBy: how, error: reason(error) };
    }
  }));
  const database = agents.map((a) => (a as { stats?: { database?: unknown } }).stats?.database).find((d) => typeof d === "string");
  return {
    bridge: {
      state: bridge.state,
      pid: bridge.pid ?? null,
      reachable: !("error" in health),
      ...("error" in health ? { error: health.error } : {
        ok: health.ok, version: health.version, uptime_s: health.uptime_s,
        listener: health.listener_state, ...(health.database_error ? { databaseError: health.database_error } : {}),
      }),
      served: bridge.served,
      identity: bridge.identity ?? null,
      identityError: bridge.identityError ?? null,
      tokenConfigured: !!deps.config.token,
    },
    database: database ?? null,
    backend: typeof database === "string" ? backendOf(database) : null,
    agents,
  };
}

/** The backend named by a (masked) database URL's scheme. */
export function backendOf(url: string): string {
  const scheme = /^([a-z0-9+.-]+):/i.exec(url)?.[1]?.toLowerCase() ?? "";
  if (scheme.startsWith("postgres")) return "postgresql";
  if (scheme.startsWith("sqlite")) return "sqlite";
  return scheme || "unknown";
}

export interface SearchParams {
  query: string;
  agent: string;
  limit: number;
}

/** Validate `memoryPalace.search` params; a message naming the bad field, never a throw from deeper down. */
export function parseSearchParams(raw: unknown): SearchParams | string {
  const p = (raw ?? {}) as Record<string, unknown>;
  if (typeof p !== "object" || Array.isArray(p)) return "params must be an object {query, agent?, limit?}";
  if (typeof p.query !== "string" || !p.query.trim()) return "query must be a non-empty string";
  if (p.agent !== undefined && (typeof p.agent !== "string" || !p.agent.trim())) return "agent must be a non-empty string (an OpenClaw agent id)";
  const limit = p.limit === undefined ? DEFAULT_LIMIT : Number(p.limit);
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIMIT) return `limit must be an integer from 1 to ${MAX_LIMIT}`;
  return { query: p.query, agent: (p.agent as string | undefined)?.trim() || "main", limit };
}

/** `memoryPalace.search`: memory_recall as the agent's instance; what that agent's tools would see. */
export async function searchReport(deps: OperatorDeps, params: SearchParams): Promise<Record<string, unknown>> {
  const instance = instanceFor(deps.config, params.agent);
  const found = (await deps.bridge().call(
    "memory_recall",
    { query: params.query, limit: params.limit, include_graph: false, detail_level: "verbose" },
    { timeoutMs: deps.config.requestTimeoutMs, caller: instance },
  )) as { memories?: Array<Record<string, unknown>> } | null;
  const memories = (found?.memories ?? []).map((m) => ({
    id: m.id, score: m.score ?? null, subject: m.subject ?? null, memory_type: m.memory_type ?? null,
    instance_id: m.instance_id ?? null, visibility: m.visibility ?? null, content: m.content ?? null,
  }));
  return { agent: params.agent, instance, query: params.query, memories };
}

/** Register both gateway methods (read scope: they only read, as the agent's instance). */
export function registerOperatorMethods(api: OpenClawPluginApi, deps: () => OperatorDeps): void {
  api.registerGatewayMethod(STATUS_METHOD, async ({ respond }: { respond: Respond }) => {
    try {
      respond(true, await statusReport(deps()));
    } catch (error) {
      const r = reason(error);
      respond(false, undefined, { code: "UNAVAILABLE", message: r.message, details: { code: r.code } });
    }
  }, { scope: "operator.read" });
  api.registerGatewayMethod(SEARCH_METHOD, async ({ params, respond }: { params: unknown; respond: Respond }) => {
    const parsed = parseSearchParams(params);
    if (typeof parsed === "string") {
      respond(false, undefined, { code: "INVALID_REQUEST", message: `memory-palace: ${SEARCH_METHOD}: ${parsed}` });
      return;
    }
    try {
      respond(true, await searchReport(deps(), parsed));
    } catch (error) {
      const r = reason(error);
      const code = r.code === "INVALID_PARAMS" || r.code === "PERMISSION_DENIED" ? "INVALID_REQUEST" : "UNAVAILABLE";
      respond(false, undefined, { code, message: r.message, details: { code: r.code } });
    }
  }, { scope: "operator.read" });
}

// ---- printing (the CLI process) ------------------------------------------------------------

/** A value shown as data: a JSON string, with `<`/`>` escaped like the recall block does. */
export function quoted(value: unknown): string {
  return JSON.stringify(String(value ?? "")).replaceAll("<", "\\u003c").replaceAll(">", "\\u003e");
}

function one(value: unknown): string {
  return String(value ?? "").replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
}

export function formatStatus(report: Record<string, unknown>): string {
  const b = (report.bridge ?? {}) as Record<string, unknown>;
  const identity = b.identity as { instance?: string; role?: string; verified?: boolean } | null;
  const out = [
    `Memory Palace (through the gateway)`,
    `  bridge:    ${b.reachable ? "reachable" : "NOT reachable"} (${one(b.state)}${b.pid ? `, pid ${b.pid}` : ""}${b.version ? `, version ${one(b.version)}` : ""})${b.error ? ` - ${one((b.error as { message?: string }).message)}` : ""}`,
    `  database:  ${one(report.database ?? "?")} (${one(report.backend ?? "?")}${b.listener ? `, listener ${one(b.listener)}` : ""}${b.ok === false ? ", UNAVAILABLE" : ""})`,
    ...(b.databaseError ? [`  error:     ${one(b.databaseError)}`] : []),
    `  identity:  ${identity ? `${one(identity.instance)} (${one(identity.role)}, ${identity.verified ? "verified by token" : "unverified"})` : b.identityError ? `refused: ${one(b.identityError)}` : "none"}`,
    `  served:    ${((b.served as string[] | undefined) ?? []).map(one).join(", ") || "-"}`,
    `  agents:`,
  ];
  for (const a of (report.agents ?? []) as Array<Record<string, unknown>>) {
    const s = a.stats as Record<string, unknown> | undefined;
    const counts = s
      ? `${s.active_memories} active, ${s.archived_memories} archived, ${s.embedded_memories} embedded, ${s.total_edges} links`
      : `error: ${one((a.error as { message?: string } | undefined)?.message)}`;
    out.push(`    ${one(a.agent)} -> ${one(a.instance)} (by ${one(a.mappedBy)}): ${counts}`);
  }
  return out.join("\n");
}

export function formatSearch(report: Record<string, unknown>): string {
  const hits = (report.memories ?? []) as Array<Record<string, unknown>>;
  const out = [`${hits.length} result${hits.length === 1 ? "" : "s"} for agent ${one(report.agent)} (instance ${one(report.instance)}); content is quoted data:`];
  for (const m of hits) {
    const score = typeof m.score === "number" ? m.score.toFixed(3) : "-";
    out.push(`#${one(m.id)}  score ${score}  ${one(m.memory_type ?? "")}  subject ${quoted(m.subject ?? "")}`);
    out.push(`    content ${quoted(m.content)}`);
  }
  return out.join("\n");
}

// ---- the commands (registered with api.registerCli) -----------------------------------------

/** The subset of commander's Command the registrar uses (the CLI hands a real Command). */
interface Cmd {
  command(name: string): Cmd;
  description(text: string): Cmd;
  argument(name: string, description?: string): Cmd;
  option(flags: string, description?: string, defaultValue?: string | boolean): Cmd;
  action(fn: (...args: any[]) => unknown): Cmd;
}

type GatewayOpts = { url?: string; port?: string; token?: string; password?: string; timeout?: string; json?: boolean };

async function callGateway(method: string, opts: GatewayOpts, params: Record<string, unknown>): Promise<Record<string, unknown>> {
  const { callGatewayFromCli } = await import("openclaw/plugin-sdk/gateway-runtime");
  return callGatewayFromCli(method, { ...opts, json: true }, params, { progress: false });
}

async function runCommand(what: () => Promise<void>): Promise<void> {
  try {
    await what();
  } catch (error) {
    process.stderr.write(`openclaw ${CLI_ROOT}: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exitCode = 1;
  }
}

/** Add `memory-palace status` and `memory-palace search` to the root program. */
export async function registerCommands(program: Cmd): Promise<void> {
  const { addGatewayClientOptions } = await import("openclaw/plugin-sdk/gateway-runtime");
  const withGateway = (cmd: Cmd) => addGatewayClientOptions(cmd as never) as unknown as Cmd;
  const root = program.command(CLI_ROOT).description(CLI_DESCRIPTION);
  withGateway(
    root.command("status")
      .description("Bridge reachable, database and backend, identity, and per agent its instance and memory counts")
      .option("--json", "Print the gateway's JSON answer", false),
  ).action((opts: GatewayOpts) => runCommand(async () => {
    const report = await callGateway(STATUS_METHOD, opts, {});
    process.stdout.write(`${opts.json ? JSON.stringify(report, null, 2) : formatStatus(report)}\n`);
  }));
  withGateway(
    root.command("search")
      .description("Recall memories as an agent's instance (what that agent's tools see)")
      .argument("<query>", "What to recall")
      .option("--agent <id>", "OpenClaw agent id whose instance searches (config agents)", "main")
      .option("--limit <n>", `Results, 1-${MAX_LIMIT}`, String(DEFAULT_LIMIT))
      .option("--json", "Print the gateway's JSON answer", false),
  ).action((query: string, opts: GatewayOpts & { agent?: string; limit?: string }) => runCommand(async () => {
    const limit = Number(opts.limit ?? DEFAULT_LIMIT);
    const problem = parseSearchParams({ query, agent: opts.agent, limit });
    if (typeof problem === "string") throw new Error(problem);
    const report = await callGateway(SEARCH_METHOD, opts, { query, agent: problem.agent, limit });
    process.stdout.write(`${opts.json ? JSON.stringify(report, null, 2) : formatSearch(report)}\n`);
  }));
}

/** `api.registerCli` with the root descriptor (also declared as cliCommands in the manifest). */
export function registerPalaceCli(api: OpenClawPluginApi): void {
  if (typeof api.registerCli !== "function") return;
  api.registerCli(async ({ program }) => registerCommands(program as unknown as Cmd), {
    descriptors: [{ name: CLI_ROOT, description: CLI_DESCRIPTION, hasSubcommands: true }],
  });
}
