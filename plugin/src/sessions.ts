/**
 * Session registry: which OpenClaw session speaks for which Memory Palace instance, and in which
 * named databases the instance was seen. Routes come from config (pinned), the bridge's
 * instance_routes, this gateway's instanceId, and tool calls (learned, last caller wins). Every
 * instance with a route is one the bridge is asked to serve (see BridgeClient.serve).
 */
import { TOOL_SPECS, type ToolSpec } from "./tool-schemas.js";

export type RouteSource = "config" | "bridge" | "instanceId" | "tool";

export interface SessionRoute {
  readonly sessionKey: string;
  readonly agentId: string;
  readonly lastSeen: number;
  readonly source: RouteSource;
  /** Named databases the instance was seen in (a call's `database`); the default is implied. */
  readonly databases: readonly string[];
}

/** An instance the bridge should deliver messages for, in one database (omitted: the default). */
export interface ServedInstance {
  readonly instance: string;
  readonly database?: string;
}

/**
 * Operator-set sources (config, then the bridge's instance_routes) are pinned: a source of lower
 * rank cannot move them to another session. A tool call can replace the instanceId guess.
 */
const RANK: Readonly<Record<RouteSource, number>> = { config: 3, bridge: 2, tool: 1, instanceId: 0 };
const PINNED_RANK = 2;

export const MAIN_SESSION_KEY = "agent:main:main";

/** Session keys look like agent:<agentId>:<rest>; anything else belongs to the main agent. */
export function agentIdOf(sessionKey: string): string {
  const match = /^agent:([^:]+):/.exec(sessionKey);
  return match?.[1] ?? "main";
}

/** Tool name -> the params that say which instance the caller *is* (others, like recall's instance_id, filter). */
export function identityParams(specs: readonly ToolSpec[]): ReadonlyMap<string, readonly string[]> {
  return new Map(specs.filter((spec) => spec.identity.length > 0).map((spec) => [spec.name, spec.identity]));
}

const SPEC_IDENTITY = identityParams(TOOL_SPECS);

function databaseOf(params: Record<string, unknown>): string | undefined {
  const value = params.database;
  return typeof value === "string" && value ? value : undefined;
}

export class SessionRegistry {
  private readonly routes = new Map<string, SessionRoute>();
  private readonly defaultInstance: string | undefined;
  private readonly identity: ReadonlyMap<string, readonly string[]>;
  /** Called for each newly known instance (no database), and each new database of a known one. */
  onServe: ((instance: string, database?: string) => void) | undefined;
  /** Called after any change, so the host can persist learned routes across restarts. */
  onChange: (() => void) | undefined;

  constructor(defaultInstance?: string, identity: ReadonlyMap<string, readonly string[]> = SPEC_IDENTITY) {
    this.defaultInstance = defaultInstance;
    this.identity = identity;
  }

  /** Record that `instance` lives in `sessionKey` (and was used in `database`). True when the route changed. */
  learn(instance: string, sessionKey: string, agentId: string | undefined, source: RouteSource, database?: string): boolean {
    if (!instance || !sessionKey || instance === "all") return false;
    const now = Date.now();
    const existing = this.routes.get(instance);
    const agent = agentId || agentIdOf(sessionKey);
    const databases = existing?.databases ?? [];
    if (existing && RANK[existing.source] >= PINNED_RANK && RANK[source] < RANK[existing.source]) {
      if (existing.sessionKey === sessionKey) this.routes.set(instance, { ...existing, lastSeen: now });
      this.noteDatabase(instance, database);
      return false;
    }
    const changed = !existing || existing.sessionKey !== sessionKey || existing.agentId !== agent;
    this.routes.set(instance, { sessionKey, agentId: agent, lastSeen: now, source, databases });
    if (!existing) this.onServe?.(instance);
    this.noteDatabase(instance, database);
    this.onChange?.();
    return changed;
  }

  /** Bring back routes learned before a restart or reload (an old file's `channels` is ignored). */
  restore(saved: unknown): void {
    const data = saved as { sessions?: Record<string, Partial<SessionRoute>> } | null;
    for (const [instance, route] of Object.entries(data?.sessions ?? {})) {
      if (!route || typeof route !== "object") continue;
      const source = route.source && route.source in RANK ? route.source : "tool";
      const current = this.routes.get(instance);
      if (typeof route.sessionKey !== "string" || (current && RANK[current.source] >= RANK[source])) continue;
      this.learn(instance, route.sessionKey, route.agentId, source);
      if (Array.isArray(route.databases)) {
        for (const db of route.databases) if (typeof db === "string" && db) this.noteDatabase(instance, db);
      }
      const lastSeen = Number(route.lastSeen);
      if (Number.isFinite(lastSeen)) this.routes.set(instance, { ...this.routes.get(instance)!, lastSeen });
    }
  }

  /** Learn from one palace tool call: its identity param, else this gateway's instanceId. */
  noteToolCall(toolName: string, params: Record<string, unknown>, sessionKey?: string, agentId?: string): string | undefined {
    if (!sessionKey) return undefined;
    const database = databaseOf(params);
    let instance: string | undefined;
    for (const key of this.identity.get(toolName) ?? []) {
      const value = params[key];
      if (typeof value === "string" && value) {
        instance = value;
        break;
      }
    }
    if (!instance && this.defaultInstance) {
      // A call without an identity acts as this gateway's instance; it refines the guessed route.
      instance = this.defaultInstance;
      const current = this.routes.get(instance);
      if (current && current.source !== "instanceId") {
        this.noteDatabase(instance, database);
        return undefined;
      }
    }
    if (!instance) return undefined;
    this.learn(instance, sessionKey, agentId, "tool", database);
    return instance;
  }

  get(instance: string): SessionRoute | undefined {
    return this.routes.get(instance);
  }

  instances(): string[] {
    return [...this.routes.keys()];
  }

  /** What the bridge should serve: every routed instance, in the default and each database it used. */
  served(): ServedInstance[] {
    const out: ServedInstance[] = [];
    for (const [instance, route] of this.routes) {
      out.push({ instance });
      for (const database of route.databases) out.push({ instance, database });
    }
    return out;
  }

  snapshot(): { sessions: Record<string, SessionRoute>; count: number } {
    return { sessions: Object.fromEntries(this.routes), count: this.routes.size };
  }

  private noteDatabase(instance: string, database: string | undefined): void {
    const route = this.routes.get(instance);
    if (!database || !route || route.databases.includes(database)) return;
    this.routes.set(instance, { ...route, databases: [...route.databases, database] });
    this.onServe?.(instance, database);
    this.onChange?.();
  }
}
