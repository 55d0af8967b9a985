/**
 * Plugin config: the manifest's configSchema is the contract (OpenClaw validates against it);
 * parseConfig() applies the defaults once and everything after it gets a typed PluginConfig.
 */

export interface InstanceRoute {
  readonly sessionKey: string;
  readonly agentId?: string;
}

export interface AutoRecallConfig {
  readonly enabled: boolean;
  /** Budget of the injected block, in estimated tokens (characters / 4). */
  readonly maxTokens: number;
  readonly limit: number;
  /** Recall score a memory needs to be injected. */
  readonly minScore: number;
  /** Also list the instance's unread messages (sender, subject, id; never content). */
  readonly includeMessages: boolean;
  /** Turn triggers (ctx.trigger) that get no injection: heartbeat, cron, ... */
  readonly skipTriggers: readonly string[];
}

export interface AutoCaptureConfig {
  readonly enabled: boolean;
  /** Which speakers of an interactive turn are stored: user, assistant. */
  readonly roles: readonly string[];
  /** Shorter texts are not stored. */
  readonly minChars: number;
  /** Replace API keys, tokens and passwords with [REDACTED:kind] before storing. */
  readonly redact: boolean;
  /** Visibility of captured turns: private (the agent's instance only), shared, or a scope. */
  readonly visibility: string;
  readonly skipTriggers: readonly string[];
}

export interface PluginConfig {
  readonly bridgeCommand: string;
  readonly pythonPath?: string;
  readonly instanceId?: string;
  /** OpenClaw agent id -> Memory Palace instance it acts as (see instanceFor). */
  readonly agents: Readonly<Record<string, string>>;
  /** Token for the bridge (MEMORY_PALACE_TOKEN); never logged or reported. */
  readonly token?: string;
  readonly autoRecall: AutoRecallConfig;
  readonly autoCapture: AutoCaptureConfig;
  readonly dataDir?: string;
  readonly databaseUrl?: string;
  readonly requestTimeoutMs: number;
  readonly llmRequestTimeoutMs: number;
  readonly readyTimeoutMs: number;
  readonly instanceRoutes: Readonly<Record<string, InstanceRoute>>;
}

export const DEFAULTS = {
  bridgeCommand: "memory-palace-bridge",
  requestTimeoutMs: 30_000,
  llmRequestTimeoutMs: 180_000,
  readyTimeoutMs: 30_000,
  autoRecall: {
    enabled: true,
    maxTokens: 1000,
    limit: 5,
    // Measured on a small probe (scripts in the README's OpenClaw section): relevant hits scored
    // 0.37-0.97, unrelated queries' best hits 0.09-0.19 (hybrid score, local embedder).
    minScore: 0.3,
    includeMessages: true,
    skipTriggers: ["heartbeat", "cron"],
  },
  autoCapture: {
    enabled: true,
    roles: ["user", "assistant"],
    minChars: 20,
    redact: true,
    visibility: "private",
    skipTriggers: ["heartbeat", "cron"],
  },
} as const;

const KEYS = new Set([
  "bridgeCommand", "pythonPath", "instanceId", "agents", "token", "dataDir", "databaseUrl",
  "requestTimeoutMs", "llmRequestTimeoutMs", "readyTimeoutMs", "instanceRoutes", "autoRecall",
  "autoCapture",
]);
const RECALL_KEYS = ["enabled", "maxTokens", "limit", "minScore", "includeMessages", "skipTriggers"];
const CAPTURE_KEYS = ["enabled", "roles", "minChars", "redact", "visibility", "skipTriggers"];
const ROLES = new Set(["user", "assistant"]);

function fail(message: string): never {
  throw new Error(`memory-palace: config ${message} (plugins.entries.memory-palace.config)`);
}

function str(raw: Record<string, unknown>, key: string): string | undefined {
  const value = raw[key];
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value !== "string") fail(`key ${key} must be a string`);
  return value;
}

function ms(raw: Record<string, unknown>, key: string, fallback: number): number {
  const value = raw[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1000) {
    fail(`key ${key} must be an integer number of milliseconds >= 1000`);
  }
  return value;
}

function routes(value: unknown): Record<string, InstanceRoute> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) {
    fail("key instanceRoutes must be an object of instance id -> session key");
  }
  const out: Record<string, InstanceRoute> = {};
  for (const [instance, route] of Object.entries(value as Record<string, unknown>)) {
    if (typeof route === "string" && route) {
      out[instance] = { sessionKey: route };
    } else if (route && typeof route === "object" && typeof (route as InstanceRoute).sessionKey === "string") {
      const r = route as InstanceRoute;
      out[instance] = r.agentId ? { sessionKey: r.sessionKey, agentId: r.agentId } : { sessionKey: r.sessionKey };
    } else {
      fail(`key instanceRoutes.${instance} must be a session key or {sessionKey, agentId}`);
    }
  }
  return out;
}

function agents(value: unknown): Record<string, string> {
  if (value === undefined || value === null) return {};
  if (typeof value !== "object" || Array.isArray(value)) fail("key agents must be an object of agent id -> instance id");
  const out: Record<string, string> = {};
  for (const [agent, instance] of Object.entries(value as Record<string, unknown>)) {
    if (typeof instance !== "string" || !instance || instance === "all") {
      fail(`key agents.${agent} must be an instance id (a non-empty string other than "all")`);
    }
    out[agent] = instance;
  }
  return out;
}

function section(value: unknown, key: string, allowed: readonly string[]): Record<string, unknown> {
  if (value === undefined || value === null) return {};
  if (typeof value === "boolean") return { enabled: value };
  if (typeof value !== "object" || Array.isArray(value)) fail(`key ${key} must be an object (or true/false)`);
  const extra = Object.keys(value as object).filter((k) => !allowed.includes(k));
  if (extra.length) fail(`key ${key} has unknown key ${extra.join(", ")}; expected ${allowed.join(", ")}`);
  return value as Record<string, unknown>;
}

function bool(raw: Record<string, unknown>, key: string, where: string, fallback: boolean): boolean {
  const value = raw[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "boolean") fail(`key ${where}.${key} must be true or false`);
  return value;
}

function num(raw: Record<string, unknown>, key: string, where: string, fallback: number, min: number, max: number, integer = true): number {
  const value = raw[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || (integer && !Number.isInteger(value)) || value < min || value > max) {
    fail(`key ${where}.${key} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}`);
  }
  return value;
}

function text(raw: Record<string, unknown>, key: string, where: string, fallback: string): string {
  const value = raw[key];
  if (value === undefined || value === null) return fallback;
  if (typeof value !== "string" || !value) fail(`key ${where}.${key} must be a non-empty string`);
  return value;
}

function list(raw: Record<string, unknown>, key: string, where: string, fallback: readonly string[], allowed?: ReadonlySet<string>): string[] {
  const value = raw[key];
  if (value === undefined || value === null) return [...fallback];
  if (!Array.isArray(value) || value.some((v) => typeof v !== "string" || (allowed && !allowed.has(v)))) {
    fail(`key ${where}.${key} must be a list of ${allowed ? [...allowed].join(" / ") : "strings"}`);
  }
  return [...new Set(value as string[])];
}

function autoRecall(value: unknown): AutoRecallConfig {
  const raw = section(value, "autoRecall", RECALL_KEYS);
  const d = DEFAULTS.autoRecall;
  return {
    enabled: bool(raw, "enabled", "autoRecall", d.enabled),
    maxTokens: num(raw, "maxTokens", "autoRecall", d.maxTokens, 150, 20_000),
    limit: num(raw, "limit", "autoRecall", d.limit, 1, 50),
    minScore: num(raw, "minScore", "autoRecall", d.minScore, -1, 10, false),
    includeMessages: bool(raw, "includeMessages", "autoRecall", d.includeMessages),
    skipTriggers: list(raw, "skipTriggers", "autoRecall", d.skipTriggers),
  };
}

function autoCapture(value: unknown): AutoCaptureConfig {
  const raw = section(value, "autoCapture", CAPTURE_KEYS);
  const d = DEFAULTS.autoCapture;
  return {
    enabled: bool(raw, "enabled", "autoCapture", d.enabled),
    roles: list(raw, "roles", "autoCapture", d.roles, ROLES),
    minChars: num(raw, "minChars", "autoCapture", d.minChars, 1, 100_000),
    redact: bool(raw, "redact", "autoCapture", d.redact),
    visibility: text(raw, "visibility", "autoCapture", d.visibility),
    skipTriggers: list(raw, "skipTriggers", "autoCapture", d.skipTriggers),
  };
}

/**
 * The instance an OpenClaw agent acts as: its entry in `agents`, else the gateway's
 * `instanceId`, else the agent id itself. Every tool call, auto-recall and auto-capture of that
 * agent's sessions is bound to it (the bridge's request `caller`).
 */
export function instanceFor(cfg: Pick<PluginConfig, "agents" | "instanceId">, agentId: string): string {
  return Object.hasOwn(cfg.agents, agentId) ? cfg.agents[agentId]! : (cfg.instanceId ?? agentId);
}

/** Validate and default the raw plugin config. Unknown keys are named in the error. */
export function parseConfig(raw: unknown): PluginConfig {
  const cfg = (raw ?? {}) as Record<string, unknown>;
  if (typeof cfg !== "object" || Array.isArray(cfg)) fail("must be an object");
  const unknown = Object.keys(cfg).filter((k) => !KEYS.has(k));
  if (unknown.length) fail(`has unknown key ${unknown.join(", ")}; expected ${[...KEYS].join(", ")}`);
  return {
    bridgeCommand: str(cfg, "bridgeCommand") ?? DEFAULTS.bridgeCommand,
    pythonPath: str(cfg, "pythonPath"),
    instanceId: str(cfg, "instanceId"),
    agents: agents(cfg.agents),
    token: str(cfg, "token"),
    autoRecall: autoRecall(cfg.autoRecall),
    autoCapture: autoCapture(cfg.autoCapture),
    dataDir: str(cfg, "dataDir"),
    databaseUrl: str(cfg, "databaseUrl"),
    requestTimeoutMs: ms(cfg, "requestTimeoutMs", DEFAULTS.requestTimeoutMs),
    llmRequestTimeoutMs: ms(cfg, "llmRequestTimeoutMs", DEFAULTS.llmRequestTimeoutMs),
    readyTimeoutMs: ms(cfg, "readyTimeoutMs", DEFAULTS.readyTimeoutMs),
    instanceRoutes: routes(cfg.instanceRoutes),
  };
}

export interface BridgeLaunch {
  readonly command: string;
  readonly args: readonly string[];
  readonly env: Readonly<Record<string, string>>;
  /** Shown in errors: how the user fixes a bridge that will not start. */
  readonly installHint: string;
}

/** How to start the bridge: `<pythonPath> -u -m memory_palace.bridge`, else bridgeCommand. */
export function bridgeLaunch(cfg: PluginConfig): BridgeLaunch {
  const env: Record<string, string> = { PYTHONUNBUFFERED: "1" };
  if (cfg.instanceId) env.MEMORY_PALACE_INSTANCE_ID = cfg.instanceId;
  if (cfg.dataDir) env.MEMORY_PALACE_DATA_DIR = cfg.dataDir;
  if (cfg.databaseUrl) env.MEMORY_PALACE_DATABASE_URL = cfg.databaseUrl;
  if (cfg.token) env.MEMORY_PALACE_TOKEN = cfg.token;
  if (cfg.pythonPath) {
    return {
      command: cfg.pythonPath,
      args: ["-u", "-m", "memory_palace.bridge"],
      env,
      installHint:
        `check that ${cfg.pythonPath} exists and has the package: \`${cfg.pythonPath} -m pip install memory-palace\``,
    };
  }
  return {
    command: cfg.bridgeCommand,
    args: [],
    env,
    installHint:
      `install the bridge with \`pip install memory-palace\` so \`${cfg.bridgeCommand}\` is on the gateway's PATH, ` +
      "or set plugins.entries.memory-palace.config.pythonPath to a Python that has it",
  };
}
