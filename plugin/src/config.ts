/**
 * Plugin config: the manifest's configSchema is the contract (OpenClaw validates against it);
 * parseConfig() applies the defaults once and everything after it gets a typed PluginConfig.
 */

export interface InstanceRoute {
  readonly sessionKey: string;
  readonly agentId?: string;
}

export interface PluginConfig {
  readonly bridgeCommand: string;
  readonly pythonPath?: string;
  readonly instanceId?: string;
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
} as const;

const KEYS = new Set([
  "bridgeCommand", "pythonPath", "instanceId", "dataDir", "databaseUrl", "requestTimeoutMs",
  "llmRequestTimeoutMs", "readyTimeoutMs", "instanceRoutes",
]);

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
