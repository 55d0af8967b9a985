/**
 * OpenClaw's memory search runtime (`registerMemoryCapability({ runtime })`): the host asks it for
 * a search manager per agent; search() is the bridge's memory_recall and status() reports
 * memory_stats and the bridge's _health, both run as the agent's mapped instance (the request's
 * `caller`, config `agents`), so the host sees exactly what that agent's tools see.
 *
 * In the gateway (the bridge service started in this process) managers share its bridge and
 * close() leaves it running. Elsewhere (a CLI process that loaded the plugin without starting its
 * service) the first call starts a bridge and close() stops it, so the command can exit.
 */
import { instanceFor, type PluginConfig } from "./config.js";

/** Where a hit lives, as OpenClaw prints it (`path:startLine-endLine`); readFile() takes it back. */
export const PATH_PREFIX = "memory-palace/memory/";
const SNIPPET_MAX_CHARS = 700;
const DEFAULT_MAX_RESULTS = 10;
const MAX_RESULTS = 50;

export interface RuntimeBridge {
  call(method: string, params: Record<string, unknown>, options: { timeoutMs: number; caller?: string; signal?: AbortSignal }): Promise<unknown>;
}

export interface MemoryRuntimeDeps {
  readonly config: PluginConfig;
  /** The live bridge of this process's host. */
  readonly bridge: () => RuntimeBridge;
  /** True when this process runs the bridge service (the gateway). */
  readonly serviceRunning: () => boolean;
  /** Stop the bridge a manager started outside the gateway. */
  readonly release: () => Promise<void>;
}

export interface SearchHit {
  path: string;
  startLine: number;
  endLine: number;
  score: number;
  snippet: string;
  source: "memory";
  citation: string;
}

interface Recalled {
  readonly id: number;
  readonly subject?: string | null;
  readonly memory_type?: string | null;
  readonly content?: string | null;
  readonly score?: number;
}

/** What status() reports: OpenClaw's provider-status shape, Memory Palace's numbers under custom. */
export interface PalaceStatus {
  backend: "builtin";
  provider: string;
  model?: string;
  chunks?: number;
  dirty: boolean;
  lastSyncError?: string;
  sources: "memory"[];
  vector: { enabled: boolean; available?: boolean };
  fts: { enabled: boolean; available: boolean };
  custom: { memoryPalace: Record<string, unknown>; searchMode: "hybrid" };
}

export function pathOf(id: number): string {
  return `${PATH_PREFIX}${id}`;
}

export function idOfPath(relPath: string): number | undefined {
  if (!relPath.startsWith(PATH_PREFIX)) return undefined;
  const rest = relPath.slice(PATH_PREFIX.length);
  return /^[1-9]\d{0,17}$/.test(rest) ? Number(rest) : undefined;
}

/** One memory_recall hit as an OpenClaw search result (subject line, then the content). */
export function toHit(m: Recalled): SearchHit {
  const text = [m.subject ? `${m.subject}:` : "", m.content ?? ""].filter(Boolean).join(" ").replace(/\s+/g, " ").trim();
  const lines = Math.max(1, String(m.content ?? "").split("\n").length);
  return {
    path: pathOf(m.id),
    startLine: 1,
    endLine: lines,
    score: typeof m.score === "number" ? m.score : 0,
    snippet: text.length > SNIPPET_MAX_CHARS ? `${text.slice(0, SNIPPET_MAX_CHARS - 1)}…` : text,
    source: "memory",
    citation: `memory_get ${m.id}`,
  };
}

function statusOf(instance: string, stats: Record<string, unknown> | undefined, health: Record<string, unknown> | undefined, error: string | undefined): PalaceStatus {
  const models = stats?.embedding_models as Record<string, number> | undefined;
  const model = models && typeof models === "object" ? Object.keys(models)[0] : undefined;
  const embedded = typeof stats?.embedded_memories === "number" ? stats.embedded_memories : undefined;
  const active = typeof stats?.active_memories === "number" ? stats.active_memories : undefined;
  return {
    backend: "builtin", // the only value OpenClaw's type allows; `provider` names us
    provider: "memory-palace",
    ...(model ? { model } : {}),
    ...(active !== undefined ? { chunks: active } : {}),
    dirty: false,
    ...(error ? { lastSyncError: error } : {}),
    sources: ["memory"],
    vector: { enabled: true, ...(embedded !== undefined ? { available: embedded > 0 } : {}) },
    fts: { enabled: true, available: !error },
    custom: {
      searchMode: "hybrid",
      memoryPalace: {
        instance,
        ...(stats ? { stats } : {}),
        ...(health ? { bridge: { ok: health.ok, version: health.version, pid: health.pid, uptime_s: health.uptime_s } } : {}),
        ...(error ? { error } : {}),
      },
    },
  };
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A search manager bound to one agent's instance. */
export async function createSearchManager(deps: MemoryRuntimeDeps, agentId: string) {
  const instance = instanceFor(deps.config, agentId);
  const timeoutMs = deps.config.requestTimeoutMs;
  const call = (method: string, params: Record<string, unknown>, signal?: AbortSignal) =>
    deps.bridge().call(method, params, { timeoutMs, caller: instance, ...(signal ? { signal } : {}) });

  // status() is synchronous in OpenClaw's contract: read the numbers now, refresh them after each search.
  let status: PalaceStatus;
  const refresh = async () => {
    const [stats, health] = await Promise.all([
      call("memory_stats", {}) as Promise<Record<string, unknown>>,
      deps.bridge().call("_health", {}, { timeoutMs }).catch(() => undefined) as Promise<Record<string, unknown> | undefined>,
    ]);
    status = statusOf(instance, stats, health, health && health.ok === false ? String(health.database_error ?? "database unavailable") : undefined);
  };
  await refresh();

  return {
    async search(query: string, opts: { maxResults?: number; minScore?: number; signal?: AbortSignal } = {}): Promise<SearchHit[]> {
      const limit = Math.min(MAX_RESULTS, Math.max(1, Math.floor(opts.maxResults ?? DEFAULT_MAX_RESULTS)));
      const found = (await call("memory_recall", { query, limit, include_graph: false, detail_level: "verbose" }, opts.signal)) as { memories?: Recalled[] } | null;
      const min = typeof opts.minScore === "number" ? opts.minScore : -Infinity;
      return (found?.memories ?? []).map(toHit).filter((hit) => hit.score >= min);
    },
    async readFile(params: { relPath: string; from?: number; lines?: number }) {
      const id = idOfPath(params.relPath);
      if (id === undefined) return { status: "not_found" as const, text: "" as const, path: params.relPath };
      // One id: the bridge answers {memory}; an id the caller may not see is an error, i.e. not found.
      const got = (await call("memory_get", { memory_ids: id }).catch(() => null)) as { memory?: Recalled } | null;
      const memory = got?.memory?.id === id ? got.memory : undefined;
      if (!memory) return { status: "not_found" as const, text: "" as const, path: params.relPath };
      const all = String(memory.content ?? "").split("\n");
      const from = Math.max(1, params.from ?? 1);
      const lines = all.slice(from - 1, params.lines ? from - 1 + params.lines : undefined);
      return { status: "ok" as const, text: lines.join("\n"), path: params.relPath, from, lines: lines.length };
    },
    status(): PalaceStatus {
      return status;
    },
    async sync(): Promise<void> {
      await refresh(); // nothing to index: memories are searchable as soon as they are stored
    },
    async probeEmbeddingAvailability() {
      const stats = status.custom.memoryPalace.stats as Record<string, unknown> | undefined;
      return stats ? { ok: true, checked: true } : { ok: false, error: String(status.custom.memoryPalace.error ?? "no stats"), checked: true };
    },
    async probeVectorAvailability(): Promise<boolean> {
      return status.vector.available ?? true;
    },
    async close(): Promise<void> {
      // Asked when closing: a service that started meanwhile (the gateway) keeps its bridge.
      if (!deps.serviceRunning()) await deps.release();
    },
  };
}

/** The `runtime` of OpenClaw's memory capability. */
export function createMemoryRuntime(deps: MemoryRuntimeDeps) {
  return {
    async getMemorySearchManager(params: { agentId: string }) {
      try {
        return { manager: await createSearchManager(deps, params.agentId) };
      } catch (error) {
        if (!deps.serviceRunning()) await deps.release().catch(() => undefined);
        return { manager: null, error: `Memory Palace: ${message(error)}` };
      }
    },
    resolveMemoryBackendConfig() {
      return { backend: "builtin" as const };
    },
    async closeAllMemorySearchManagers(): Promise<void> {
      if (!deps.serviceRunning()) await deps.release();
    },
  };
}
