/**
 * One Memory Palace host (bridge client, session registry, waker) per plugin config per process.
 * OpenClaw calls register() several times in one gateway ("full", then "discovery", and again for
 * agent runs), sometimes from separate copies of this module; measured on 2026.9.6, tools from a
 * later registration otherwise spawned a second bridge and learned routes the waker never saw.
 * So hosts live in a process-wide table (a Symbol.for key, as OpenClaw does for its own
 * singletons), and the service's stop() removes its host so a reload starts fresh.
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { BridgeClient, type BridgeLogger } from "./bridge-client.js";
import { AutoMemory } from "./auto.js";
import { bridgeLaunch, instanceFor, type PluginConfig } from "./config.js";
import { mainSessionOf, SessionRegistry } from "./sessions.js";
import { enabledSpecs } from "./tools.js";
import { Waker, type WakeRuntime } from "./wake.js";

export interface Host {
  readonly key: string;
  readonly bridge: BridgeClient;
  readonly registry: SessionRegistry;
  readonly waker: Waker;
  /** Auto-recall / auto-capture state (last injection and capture per session). */
  readonly auto: AutoMemory;
  /** Latest OpenClaw runtime seen by any registration; wakes go through it. */
  runtime: WakeRuntime | undefined;
  /** Set by the service's start(): this process (the gateway) owns the bridge's lifetime. */
  serviceStarted?: boolean;
  /** Where learned routes are saved (set by the service's start, under OpenClaw's stateDir). */
  statePath?: string;
  saveTimer?: NodeJS.Timeout;
}

const SAVE_DEBOUNCE_MS = 250;

/**
 * Persist the session registry under `<stateDir>/memory-palace/sessions.json`, so a gateway
 * restart or a plugin reload still knows which session each instance lives in. Loads it first.
 */
export function persistRegistry(host: Host, stateDir: string, logger: BridgeLogger): void {
  if (host.statePath) return;
  const path = join(stateDir, "memory-palace", "sessions.json");
  host.statePath = path;
  try {
    host.registry.restore(JSON.parse(readFileSync(path, "utf8")));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
      logger.warn(`memory-palace: ignoring unreadable ${path}: ${String(error)}`);
    }
  }
  host.registry.onChange = () => {
    if (host.saveTimer) return;
    host.saveTimer = setTimeout(() => saveRegistry(host, logger), SAVE_DEBOUNCE_MS);
    host.saveTimer.unref();
  };
}

function saveRegistry(host: Host, logger: BridgeLogger): void {
  host.saveTimer = undefined;
  if (!host.statePath) return;
  try {
    mkdirSync(dirname(host.statePath), { recursive: true });
    const tmp = `${host.statePath}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(host.registry.snapshot()));
    renameSync(tmp, host.statePath);
  } catch (error) {
    logger.warn(`memory-palace: could not save the session registry to ${host.statePath}: ${String(error)}`);
  }
}

const TABLE = Symbol.for("memory-palace.hosts");

function table(): Map<string, Host> {
  const g = globalThis as { [TABLE]?: Map<string, Host> };
  return (g[TABLE] ??= new Map());
}

/** The live host for this config, created on first use. Never spawns: the bridge starts lazily. */
export function acquireHost(config: PluginConfig, logger: BridgeLogger, runtime: WakeRuntime | undefined): Host {
  const key = JSON.stringify(config);
  const existing = table().get(key);
  if (existing && existing.bridge.state !== "stopped" && existing.bridge.state !== "stopping") {
    if (runtime) existing.runtime = runtime;
    return existing;
  }
  const registry = new SessionRegistry((agentId) => instanceFor(config, agentId));
  const host: Host = {
    key, registry, runtime, bridge: undefined as unknown as BridgeClient, waker: undefined as unknown as Waker,
    auto: new AutoMemory(),
  };
  const waker = new Waker(registry, () => host.runtime, logger);
  const bridge = new BridgeClient({
    launch: bridgeLaunch(config),
    readyTimeoutMs: config.readyTimeoutMs,
    logger,
    // Only the gateway, where the service runs, can wake sessions: elsewhere (a CLI run) the
    // bridge must not mark messages delivered.
    delivering: () => host.serviceStarted === true,
    // The bridge serves every instance with a route: announced on each ready line, retried on failure.
    served: () => registry.served(),
    onEvent: (event, data) => {
      if (event === "new_message") waker.handle(data);
      else if (event === "new_memory") waker.handleMemory(data);
      else if (event === "listener_status") logger.info(`memory-palace: listener ${JSON.stringify(data)}`);
    },
    onReady: (info) => {
      const missing = enabledSpecs(info.extensions).filter((spec) => !info.tools.includes(spec.method));
      if (missing.length && info.tools.length) {
        logger.warn(`memory-palace: the bridge does not serve ${missing.map((s) => s.method).join(", ")}; upgrade memory-palace so bridge and plugin match`);
      }
      bridge.call("_get_instance_routes", {}, { timeoutMs: 10_000 })
        .then((routes) => seedBridgeRoutes(registry, routes, logger))
        .catch((error: unknown) => logger.warn(`memory-palace: could not read instance routes: ${String(error)}`));
    },
  });
  Object.assign(host, { bridge, waker });
  registry.onServe = (instance, database) => {
    bridge.serve(instance, database).catch(() => undefined); // logged and retried by the client
  };
  // Every mapped instance is served from the start; its wakes go to its agent's main session
  // until one of the agent's sessions calls a tool.
  if (config.instanceId) registry.learn(instanceFor(config, "main"), mainSessionOf("main"), "main", "agents");
  for (const [agentId, instance] of Object.entries(config.agents)) {
    registry.learn(instance, mainSessionOf(agentId), agentId, "agents");
  }
  for (const [instance, route] of Object.entries(config.instanceRoutes)) {
    if (!registry.learn(instance, route.sessionKey, route.agentId, "config") && !registry.get(instance)) {
      logger.warn(`memory-palace: ignoring instanceRoutes.${instance}: the agent of ${route.sessionKey} acts as ${registry.instanceOfSession(route.sessionKey, route.agentId)}, not ${instance} (config agents)`);
    }
  }
  table().set(key, host);
  return host;
}

/** Stop the host's bridge and forget it (service stop / plugin replacement). */
export async function releaseHost(host: Host, logger: BridgeLogger): Promise<void> {
  if (table().get(host.key) === host) table().delete(host.key);
  if (host.saveTimer) {
    clearTimeout(host.saveTimer);
    saveRegistry(host, logger);
  }
  host.waker.stop();
  await host.bridge.stop();
}

function seedBridgeRoutes(registry: SessionRegistry, routes: unknown, logger: BridgeLogger): void {
  const entries = (routes as { instance_routes?: Record<string, unknown> } | null)?.instance_routes ?? {};
  for (const [instance, route] of Object.entries(entries)) {
    const r = route as { session?: unknown; sessionKey?: unknown; agentId?: unknown } | string;
    const sessionKey = typeof r === "string" ? r : (r?.sessionKey ?? r?.session);
    const agentId = typeof r === "object" && typeof r?.agentId === "string" ? r.agentId : undefined;
    if (typeof sessionKey !== "string" || !sessionKey) continue;
    if (!registry.learn(instance, sessionKey, agentId, "bridge") && registry.get(instance)?.sessionKey !== sessionKey) {
      logger.debug?.(`memory-palace: the bridge's route for ${instance} (${sessionKey}) is not used: that session's agent acts as ${registry.instanceOfSession(sessionKey, agentId)}`);
    }
  }
}
