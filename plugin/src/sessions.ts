/**
 * Session registry: which OpenClaw session speaks for which Memory Palace instance, and in which
 * named databases the instance was seen. Each agent acts as exactly one instance (config `agents`,
 * see config.instanceFor), so a route for an instance can only point at a session of an agent
 * mapped to it: the model's parameters never move a route. Routes come from config (pinned), the
 * bridge's instance_routes, the agent mapping (the agent's main session, a guess) and tool calls
 * (the caller's own session, last caller wins). Every routed instance is one the bridge is asked
 * to serve (see BridgeClient.serve).
 */

export type RouteSource = "config" | "bridge" | "agents" | "tool";

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
 * rank cannot move them to another session. A tool call can replace the agent-mapping guess.
 */
const RANK: Readonly<Record<RouteSource, number>> = { config: 3, bridge: 2, tool: 1, agents: 0 };
const PINNED_RANK = 2;

/** Session keys look like agent:<agentId>:<rest>; anything else belongs to the main agent. */
export function agentIdOf(sessionKey: string): string {
  const match = /^agent:([^:]+):/.exec(sessionKey);
  return match?.[1] ?? "main";
}

/** The session key of an agent's main session. */
export function mainSessionOf(agentId: string): string {
  return `agent:${agentId}:main`;
}

/** Maps an OpenClaw agent id to the instance it acts as. */
export type InstanceOf = (agentId: string) => string;

function databaseOf(params: Record<string, unknown>): string | undefined {
  const value = params.database;
  return typeof value === "string" && value ? value : undefined;
}

export class SessionRegistry {
  private readonly routes = new Map<string, SessionRoute>();
  private readonly instanceOf: InstanceOf;
  /** Routes refused because the session's agent acts as another instance. */
  refused = 0;
  /** Called for each newly known instance (no database), and each new database of a known one. */
  onServe: ((instance: string, database?: string) => void) | undefined;
  /** Called after any change, so the host can persist learned routes across restarts. */
  onChange: (() => void) | undefined;

  /** Without a mapping every agent acts as the instance of its own name. */
  constructor(instanceOf: InstanceOf = (agentId) => agentId) {
    this.instanceOf = instanceOf;
  }

  /** The instance the agent of this session (or this agent id) acts as. */
  instanceOfSession(sessionKey: string | undefined, agentId?: string): string {
    return this.instanceOf(agentId || agentIdOf(sessionKey ?? ""));
  }

  /** True when a session of `agentId` may receive `instance`'s wakes (the agent acts as it). */
  entitled(instance: string, agentId: string): boolean {
    return this.instanceOf(agentId) === instance;
  }

  /**
   * Record that `instance` lives in `sessionKey` (and was used in `database`). True when the
   * route changed. Refused (false) when the session's agent acts as another instance.
   */
  learn(instance: string, sessionKey: string, agentId: string | undefined, source: RouteSource, database?: string): boolean {
    if (!instance || !sessionKey || instance === "all") return false;
    const agent = agentId || agentIdOf(sessionKey);
    if (!this.entitled(instance, agent)) {
      this.refused++;
      return false;
    }
    const now = Date.now();
    const existing = this.routes.get(instance);
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

  /**
   * Bring back routes learned before a restart or reload (an old file's `channels` is ignored).
   * They come back as learned ones: config and the bridge pin their routes again themselves, and
   * a route whose agent now acts as another instance is refused.
   */
  restore(saved: unknown): void {
    const data = saved as { sessions?: Record<string, Partial<SessionRoute>> } | null;
    for (const [instance, route] of Object.entries(data?.sessions ?? {})) {
      if (!route || typeof route !== "object" || typeof route.sessionKey !== "string") continue;
      const current = this.routes.get(instance);
      if (current && RANK[current.source] >= RANK.tool) continue;
      this.learn(instance, route.sessionKey, route.agentId, "tool");
      if (this.routes.get(instance)?.sessionKey !== route.sessionKey) continue;
      if (Array.isArray(route.databases)) {
        for (const db of route.databases) if (typeof db === "string" && db) this.noteDatabase(instance, db);
      }
      const lastSeen = Number(route.lastSeen);
      const now = this.routes.get(instance);
      if (now && Number.isFinite(lastSeen)) this.routes.set(instance, { ...now, lastSeen });
    }
  }

  /**
   * Learn from one palace tool call: the calling session speaks for its agent's instance (never
   * for an instance its parameters name). Returns that instance.
   */
  noteToolCall(params: Record<string, unknown>, sessionKey?: string, agentId?: string): string | undefined {
    if (!sessionKey) return undefined;
    const agent = agentId || agentIdOf(sessionKey);
    const instance = this.instanceOf(agent);
    this.learn(instance, sessionKey, agent, "tool", databaseOf(params));
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

  snapshot(): { sessions: Record<string, SessionRoute>; count: number; refused: number } {
    return { sessions: Object.fromEntries(this.routes), count: this.routes.size, refused: this.refused };
  }

  private noteDatabase(instance: string, database: string | undefined): void {
    const route = this.routes.get(instance);
    if (!database || !route || route.databases.includes(database)) return;
    this.routes.set(instance, { ...route, databases: [...route.databases, database] });
    this.onServe?.(instance, database);
    this.onChange?.();
  }
}
