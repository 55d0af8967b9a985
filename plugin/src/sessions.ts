/**
 * Session registry: which OpenClaw session speaks for which Memory Palace instance, and which
 * instances listen on which message channel. Routes come from config (pinned), the bridge's
 * instance_routes, this gateway's instanceId, and tool calls (learned, last caller wins).
 */

export type RouteSource = "config" | "bridge" | "instanceId" | "tool";

export interface SessionRoute {
  readonly sessionKey: string;
  readonly agentId: string;
  readonly lastSeen: number;
  readonly source: RouteSource;
}

/**
 * Operator-set sources (config, then the bridge's instance_routes) are pinned: a source of lower
 * rank cannot move them to another session. A tool call can replace the instanceId guess.
 */
const RANK: Readonly<Record<RouteSource, number>> = { config: 3, bridge: 2, tool: 1, instanceId: 0 };
const PINNED_RANK = 2;

/** Params that say which instance the caller *is* (others, like recall's instance_id, filter). */
const IDENTITY_PARAMS: Readonly<Record<string, readonly string[]>> = {
  memory_set: ["instance_id"],
  palace_message: ["instance_id", "from_instance"],
};

export const MAIN_SESSION_KEY = "agent:main:main";

/** Session keys look like agent:<agentId>:<rest>; anything else belongs to the main agent. */
export function agentIdOf(sessionKey: string): string {
  const match = /^agent:([^:]+):/.exec(sessionKey);
  return match?.[1] ?? "main";
}

export function instanceChannel(instance: string): string {
  return `memory_palace_msg_${instance}`;
}

export class SessionRegistry {
  private readonly routes = new Map<string, SessionRoute>();
  private readonly channels = new Map<string, Set<string>>();
  private readonly defaultInstance: string | undefined;
  /** Called once per newly known instance (the plugin LISTENs on its channel). */
  onDiscover: ((instance: string) => void) | undefined;
  /** Called after any change, so the host can persist learned routes across restarts. */
  onChange: (() => void) | undefined;

  constructor(defaultInstance?: string) {
    this.defaultInstance = defaultInstance;
  }

  /** Record that `instance` lives in `sessionKey`. Returns true when the route changed. */
  learn(instance: string, sessionKey: string, agentId: string | undefined, source: RouteSource): boolean {
    if (!instance || !sessionKey || instance === "all") return false;
    const now = Date.now();
    const existing = this.routes.get(instance);
    const agent = agentId || agentIdOf(sessionKey);
    if (existing && RANK[existing.source] >= PINNED_RANK && RANK[source] < RANK[existing.source]) {
      if (existing.sessionKey === sessionKey) this.routes.set(instance, { ...existing, lastSeen: now });
      return false;
    }
    const changed = !existing || existing.sessionKey !== sessionKey || existing.agentId !== agent;
    this.routes.set(instance, { sessionKey, agentId: agent, lastSeen: now, source });
    if (!existing) this.onDiscover?.(instance);
    this.onChange?.();
    return changed;
  }

  /** Bring back routes and channel members learned before a restart or reload. */
  restore(saved: unknown): void {
    const data = saved as { sessions?: Record<string, Partial<SessionRoute>>; channels?: Record<string, unknown> } | null;
    for (const [instance, route] of Object.entries(data?.sessions ?? {})) {
      const source = route.source && route.source in RANK ? route.source : "tool";
      if (typeof route.sessionKey !== "string" || this.routes.has(instance) && RANK[this.routes.get(instance)!.source] >= RANK[source]) continue;
      this.learn(instance, route.sessionKey, route.agentId, source);
      const lastSeen = Number(route.lastSeen);
      if (Number.isFinite(lastSeen)) this.routes.set(instance, { ...this.routes.get(instance)!, lastSeen });
    }
    for (const [channel, members] of Object.entries(data?.channels ?? {})) {
      if (Array.isArray(members)) for (const m of members) if (typeof m === "string") this.subscribeChannel(m, channel);
    }
  }

  /** Learn from one palace tool call: the identity param, else this gateway's instanceId. */
  noteToolCall(toolName: string, params: Record<string, unknown>, sessionKey?: string, agentId?: string): string | undefined {
    if (!sessionKey) return undefined;
    let instance: string | undefined;
    for (const key of IDENTITY_PARAMS[toolName] ?? []) {
      const value = params[key];
      if (typeof value === "string" && value) {
        instance = value;
        break;
      }
    }
    if (!instance && this.defaultInstance) {
      // A call without an identity acts as this gateway's instance; it refines the guessed route.
      const current = this.routes.get(this.defaultInstance);
      if (current && current.source !== "instanceId") return undefined;
      instance = this.defaultInstance;
    }
    if (!instance) return undefined;
    this.learn(instance, sessionKey, agentId, "tool");
    return instance;
  }

  get(instance: string): SessionRoute | undefined {
    return this.routes.get(instance);
  }

  instances(): string[] {
    return [...this.routes.keys()];
  }

  subscribeChannel(instance: string, channel: string): void {
    let members = this.channels.get(channel);
    if (!members) this.channels.set(channel, (members = new Set()));
    members.add(instance);
    this.onChange?.();
  }

  /** Returns true when nobody is left on the channel. */
  unsubscribeChannel(instance: string, channel: string): boolean {
    const members = this.channels.get(channel);
    if (!members) return true;
    members.delete(instance);
    this.onChange?.();
    if (members.size) return false;
    this.channels.delete(channel);
    return true;
  }

  channelNames(): string[] {
    return [...this.channels.keys()];
  }

  subscribers(channel: string): string[] {
    return [...(this.channels.get(channel) ?? [])];
  }

  snapshot(): { sessions: Record<string, SessionRoute>; count: number; channels: Record<string, string[]> } {
    return {
      sessions: Object.fromEntries(this.routes),
      count: this.routes.size,
      channels: Object.fromEntries([...this.channels].map(([c, m]) => [c, [...m]])),
    };
  }
}
