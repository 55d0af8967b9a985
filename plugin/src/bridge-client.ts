/**
 * Supervisor and client for the Python bridge (newline JSON on stdio): one spawn shared by
 * concurrent first calls, ready handshake with a timeout, per-call timeouts and abort that send
 * `_cancel`, restart with capped exponential backoff, and a graceful stop (_shutdown, then
 * SIGTERM, then SIGKILL). On every ready line it announces the instances to serve again
 * (served-instances.ts). It never logs stdout line by line.
 */
import { spawn, type ChildProcessWithoutNullStreams } from "node:child_process";
import type { BridgeLaunch } from "./config.js";
import { BridgeError, PLUGIN_CODES, replyCode } from "./errors.js";
import { ServedInstances } from "./served-instances.js";
import type { ServedInstance } from "./sessions.js";

export interface BridgeLogger {
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  debug?(message: string): void;
}

export interface ServiceHealth {
  reportFailure(error: unknown): void;
  clearFailure(): void;
}

/** Who the bridge acts as (its ready line's `identity`): never the token itself. */
export interface BridgeIdentity {
  readonly instance: string | null;
  readonly role: string;
  readonly verified: boolean;
}

export interface ReadyInfo {
  readonly version?: string;
  /** Bridge methods this bridge serves (its ready line's `tools`). */
  readonly tools: readonly string[];
  /** Extensions enabled in the bridge's config.json (e.g. "db_manager"). */
  readonly extensions: readonly string[];
  readonly instanceId?: string;
  readonly identity?: BridgeIdentity;
  /** Why the bridge's identity could not be established (a bad or revoked token). */
  readonly identityError?: string;
  readonly pid: number;
  /** 0 for the first start, then counts restarts. */
  readonly generation: number;
}

export interface BridgeClientOptions {
  readonly launch: BridgeLaunch;
  readonly readyTimeoutMs: number;
  readonly logger: BridgeLogger;
  readonly onEvent?: (event: string, data: unknown) => void;
  /** Runs after every ready line, once the served instances are being announced again. */
  readonly onReady?: (info: ReadyInfo) => void;
  /** The instances to serve (the session registry); announced again on every ready line. */
  readonly served?: () => Iterable<ServedInstance>;
  /** Budget of one `_subscribe` (it may start a listener or create a named database). */
  readonly announceTimeoutMs?: number;
  /**
   * False while this process can wake no one (no service running: a CLI run). The bridge then
   * starts with MEMORY_PALACE_NO_DELIVER=1, so it marks nothing delivered, and is told `_deliver`
   * once this turns true (on its ready line, or through `resumeDelivery()`). Absent: always true.
   */
  readonly delivering?: () => boolean;
  /** Restart backoff; failed announcements are retried on the same schedule. */
  readonly backoff?: { readonly initialMs: number; readonly maxMs: number };
  /** A bridge that stays up this long resets the backoff. */
  readonly stableAfterMs?: number;
  readonly stop?: { readonly shutdownMs: number; readonly termMs: number; readonly killMs: number };
}

export interface CallOptions {
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** The instance the call runs for (the request's `caller`): the bridge binds the call to it. */
  readonly caller?: string;
}

interface Pending {
  readonly method: string;
  readonly resolve: (value: unknown) => void;
  readonly reject: (error: Error) => void;
  readonly cleanup: () => void;
}

interface Proc {
  readonly child: ChildProcessWithoutNullStreams;
  readonly generation: number;
  readonly stderrTail: string[];
  ready: boolean;
  ended: boolean;
  /** Started with MEMORY_PALACE_NO_DELIVER=1 and not yet told `_deliver`. */
  paused: boolean;
  stdoutBuffer: string;
  stderrBuffer: string;
  settleStart?: (error?: Error, info?: ReadyInfo) => void;
  readyTimer?: NodeJS.Timeout;
  stableTimer?: NodeJS.Timeout;
  exited: Promise<void>;
}

type State = "idle" | "starting" | "ready" | "backoff" | "stopping" | "stopped";

const STDERR_TAIL = 20;
const ANNOUNCE_TIMEOUT_MS = 30_000;
/** Wakes handed to the next bridge: more than one claim batch of the bridge (500). */
const RECEIVED_KEPT = 1000;
const DEFAULT_BACKOFF = { initialMs: 250, maxMs: 30_000 } as const;

export class BridgeClient {
  private readonly opts: BridgeClientOptions;
  private readonly pending = new Map<number, Pending>();
  private readonly servedInstances: ServedInstances;
  private readonly received: Array<Record<string, unknown>> = [];
  private extensionsValue: readonly string[] = [];
  private identityValue: BridgeIdentity | undefined;
  private identityErrorValue: string | undefined;
  private proc: Proc | undefined;
  private startPromise: Promise<ReadyInfo> | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private restartWaiters: Array<{ resolve: (i: ReadyInfo) => void; reject: (e: Error) => void }> = [];
  private nextId = 1;
  private generation = 0;
  private failures = 0;
  private junkLines = 0;
  private lastFailure: Error | undefined;
  private health: ServiceHealth | undefined;
  private stateValue: State = "idle";

  constructor(opts: BridgeClientOptions) {
    this.opts = opts;
    this.servedInstances = new ServedInstances({
      transport: {
        call: (method, params, options) => this.call(method, params, options),
        readyGeneration: () => (this.stateValue === "ready" && this.proc?.ready && !this.proc.ended ? this.proc.generation : undefined),
      },
      logger: opts.logger,
      timeoutMs: opts.announceTimeoutMs ?? ANNOUNCE_TIMEOUT_MS,
      backoff: opts.backoff ?? DEFAULT_BACKOFF,
    });
  }

  get state(): State {
    return this.stateValue;
  }

  get pid(): number | undefined {
    return this.proc && !this.proc.ended ? this.proc.child.pid : undefined;
  }

  /**
   * Tell a bridge started without delivery to deliver now: it records the wakes received from
   * earlier bridges (one killed after writing wakes but before committing them would otherwise
   * make this one repeat them), listens, replays what its instances missed and serves the held
   * announcements. A no-op otherwise; a failure is logged and retried while this bridge runs.
   */
  async resumeDelivery(): Promise<void> {
    const proc = this.proc;
    if (!proc || !proc.ready || proc.ended || !proc.paused) return;
    try {
      const received = this.received.slice();
      const result = await this.call("_deliver", received.length ? { received } : {}, { timeoutMs: this.opts.announceTimeoutMs ?? ANNOUNCE_TIMEOUT_MS });
      proc.paused = false;
      this.servedInstances.noteReported(result);
    } catch (error) {
      this.opts.logger.warn(`memory-palace: the bridge did not start delivering (retrying in 1 s): ${String(error)}`);
      setTimeout(() => {
        if (this.proc === proc) void this.resumeDelivery();
      }, 1000).unref();
    }
  }

  /** The instances the bridge reported serving (its latest `_subscribe`/`_unsubscribe` answer). */
  get served(): readonly string[] {
    return this.servedInstances.reported;
  }

  /** Extensions of the latest ready line; none before the first one. */
  get extensions(): readonly string[] {
    return this.extensionsValue;
  }

  /** The identity of the latest ready line (instance, role, verified); never a token. */
  get identity(): BridgeIdentity | undefined {
    return this.identityValue;
  }

  get identityError(): string | undefined {
    return this.identityErrorValue;
  }

  /** Announcements not (yet) acknowledged by the running bridge. */
  get unannounced(): number {
    return this.servedInstances.unannounced;
  }

  get inFlight(): number {
    return this.pending.size;
  }

  /** Service health sink (ctx.serviceHealth): failures are reported, recoveries cleared. */
  setHealth(health: ServiceHealth | undefined): void {
    this.health = health;
  }

  /** Start the bridge (or join the start in progress). Rejects with an actionable BridgeError. */
  start(): Promise<ReadyInfo> {
    if (this.stateValue === "stopped" || this.stateValue === "stopping") {
      return Promise.reject(new BridgeError(PLUGIN_CODES.stopped, "the bridge was stopped with its service"));
    }
    if (this.stateValue === "ready" && this.proc && !this.proc.ended) {
      return Promise.resolve(this.readyInfo(this.proc));
    }
    if (this.stateValue === "backoff") return this.waitForRestart();
    if (!this.startPromise) {
      this.startPromise = this.spawnOnce().catch((error: unknown) => {
        // A failed start must not poison later attempts: reset the lazy promise.
        this.startPromise = undefined;
        throw error;
      });
    }
    return this.startPromise;
  }

  /** Send one request. The per-call timeout also covers waiting for a (re)start. */
  async call(method: string, params: Record<string, unknown>, options: CallOptions): Promise<unknown> {
    const { signal, timeoutMs, caller } = options;
    if (signal?.aborted) throw abortError(method, signal);
    const deadline = Date.now() + timeoutMs;
    await withDeadline(this.start(), timeoutMs, signal, method);
    const proc = this.proc;
    if (!proc || proc.ended || !proc.ready) {
      throw new BridgeError(PLUGIN_CODES.unavailable, `the bridge is not running; ${method} was not sent`);
    }
    const id = this.nextId++;
    return new Promise<unknown>((resolve, reject) => {
      const remaining = Math.max(1, deadline - Date.now());
      const timer = setTimeout(() => {
        this.cancel(id, new BridgeError(
          PLUGIN_CODES.timeout,
          `${method} timed out after ${timeoutMs} ms; the bridge was told to cancel it. ` +
            "Raise requestTimeoutMs (or llmRequestTimeoutMs) if the call needs longer.",
        ));
      }, remaining);
      const onAbort = () => this.cancel(id, abortError(method, signal));
      signal?.addEventListener("abort", onAbort, { once: true });
      const cleanup = () => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
      };
      this.pending.set(id, { method, resolve, reject, cleanup });
      this.write(proc, caller ? { id, method, params, caller } : { id, method, params });
    });
  }

  /**
   * Ask the bridge to deliver `new_message` events for `instance` (in `database`; the default
   * when omitted), now if it is ready and again after every restart. Never spawns. Resolves when
   * the running bridge acknowledged it (at once when none is ready); a failure rejects and is
   * retried with backoff until it holds.
   */
  serve(instance: string, database?: string): Promise<void> {
    return this.servedInstances.serve(instance, database);
  }

  /** Stop delivering for `instance` (the bridge stops serving it in every database). */
  unserve(instance: string, database?: string): Promise<void> {
    return this.servedInstances.unserve(instance, database);
  }

  /** Stop for good: _shutdown, then SIGTERM, then SIGKILL. Resolves once the process is gone. */
  async stop(): Promise<void> {
    if (this.stateValue === "stopped") return;
    this.stateValue = "stopping";
    clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    this.servedInstances.stop();
    const stopped = new BridgeError(PLUGIN_CODES.stopped, "the bridge was stopped with its service");
    for (const waiter of this.restartWaiters.splice(0)) waiter.reject(stopped);
    const proc = this.proc;
    if (proc && !proc.ended) {
      const t = this.opts.stop ?? { shutdownMs: 2000, termMs: 2000, killMs: 2000 };
      if (proc.ready) {
        this.write(proc, { id: this.nextId++, method: "_shutdown", params: {} });
        proc.child.stdin.end();
      }
      if (!(await settlesWithin(proc.exited, proc.ready ? t.shutdownMs : 0))) {
        proc.child.kill("SIGTERM");
        if (!(await settlesWithin(proc.exited, t.termMs))) {
          this.opts.logger.warn(`memory-palace: bridge pid ${proc.child.pid} ignored SIGTERM; sending SIGKILL`);
          proc.child.kill("SIGKILL");
          await settlesWithin(proc.exited, t.killMs);
        }
      }
    }
    this.failPending(stopped);
    this.stateValue = "stopped";
  }

  private readyInfo(proc: Proc, line?: Record<string, unknown>): ReadyInfo {
    return {
      version: typeof line?.version === "string" ? line.version : undefined,
      tools: strings(line?.tools),
      extensions: line ? strings(line.extensions) : this.extensionsValue,
      ...(typeof line?.instance_id === "string" ? { instanceId: line.instance_id } : {}),
      ...identityOf(line),
      pid: proc.child.pid ?? -1,
      generation: proc.generation,
    };
  }

  private spawnOnce(): Promise<ReadyInfo> {
    const { launch, logger, readyTimeoutMs } = this.opts;
    this.stateValue = "starting";
    const generation = this.generation++;
    // A restart hands the received wakes over before delivering (see resumeDelivery).
    const paused = this.received.length > 0 || (this.opts.delivering ? !this.opts.delivering() : false);
    const delivery = this.opts.delivering || paused ? { MEMORY_PALACE_NO_DELIVER: paused ? "1" : "0" } : {};
    return new Promise<ReadyInfo>((resolve, reject) => {
      let child: ChildProcessWithoutNullStreams;
      try {
        child = spawn(launch.command, [...launch.args], {
          env: { ...process.env, ...launch.env, ...delivery },
          stdio: ["pipe", "pipe", "pipe"],
        });
      } catch (cause) {
        const error = this.unavailable(`could not start \`${launch.command}\``, cause);
        this.onStartFailed(error);
        reject(error);
        return;
      }
      let markExited: () => void = () => {};
      const exited = new Promise<void>((r) => (markExited = r));
      const proc: Proc = {
        child, generation, stderrTail: [], ready: false, ended: false, paused,
        stdoutBuffer: "", stderrBuffer: "", exited,
      };
      this.proc = proc;
      proc.settleStart = (error, info) => {
        proc.settleStart = undefined;
        clearTimeout(proc.readyTimer);
        if (error) {
          this.onStartFailed(error);
          reject(error);
        } else if (info) {
          resolve(info);
        }
      };
      proc.readyTimer = setTimeout(() => {
        const error = this.unavailable(
          `\`${describe(launch)}\` did not print its ready line within ${readyTimeoutMs} ms and was killed`,
          undefined, proc);
        child.kill("SIGKILL");
        proc.settleStart?.(error);
      }, readyTimeoutMs);
      child.stdout.setEncoding("utf8");
      child.stderr.setEncoding("utf8");
      child.stdout.on("data", (chunk: string) => this.onStdout(proc, chunk));
      child.stderr.on("data", (chunk: string) => this.onStderr(proc, chunk));
      child.stdin.on("error", () => {
        /* EPIPE after the child died: the close handler reports it. */
      });
      child.on("error", (cause: NodeJS.ErrnoException) => {
        const what = cause.code === "ENOENT" ? `\`${launch.command}\` was not found` : `\`${launch.command}\` failed`;
        const error = this.unavailable(what, cause, proc);
        proc.settleStart?.(error);
        if (!proc.ended) this.onClose(proc, null, null);
      });
      child.on("close", (code, signal) => {
        markExited();
        this.onClose(proc, code, signal);
      });
      logger.info(`memory-palace: starting bridge \`${describe(launch)}\` (pid ${child.pid ?? "?"})`);
    });
  }

  private unavailable(what: string, cause?: unknown, proc?: Proc): BridgeError {
    const tail = proc?.stderrTail.length ? `\nbridge stderr (last lines):\n${proc.stderrTail.join("\n")}` : "";
    return new BridgeError(
      PLUGIN_CODES.unavailable,
      `the Memory Palace bridge is unavailable: ${what}. To fix it, ${this.opts.launch.installHint}.${tail}`,
      { cause },
    );
  }

  private onStdout(proc: Proc, chunk: string): void {
    proc.stdoutBuffer += chunk;
    let newline: number;
    while ((newline = proc.stdoutBuffer.indexOf("\n")) >= 0) {
      const line = proc.stdoutBuffer.slice(0, newline).trim();
      proc.stdoutBuffer = proc.stdoutBuffer.slice(newline + 1);
      if (line) this.onLine(proc, line);
    }
  }

  private onLine(proc: Proc, line: string): void {
    let msg: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(line);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not an object");
      msg = parsed as Record<string, unknown>;
    } catch {
      // Summarised, never echoed: stdout lines may carry memory content.
      if (this.junkLines++ % 100 === 0) {
        this.opts.logger.warn(`memory-palace: bridge wrote non-protocol output to stdout (${this.junkLines} lines so far)`);
      }
      return;
    }
    if (msg.ready === true && !proc.ready) {
      this.onReadyLine(proc, msg);
    } else if (msg.ready === false && !proc.ready) {
      // The bridge refused to start (bad config): it says why; it exits by itself.
      const reason = (msg.error as { message?: unknown } | undefined)?.message;
      proc.settleStart?.(new BridgeError(PLUGIN_CODES.unavailable, `the Memory Palace bridge refused to start: ${String(reason ?? "no reason given")}`));
    } else if (typeof msg.event === "string") {
      this.noteReceived(msg.event, msg.data);
      try {
        this.opts.onEvent?.(msg.event, msg.data);
      } catch (error) {
        this.opts.logger.error(`memory-palace: ${msg.event} handler failed: ${String(error)}`);
      }
    } else if (typeof msg.id === "number") {
      const pending = this.pending.get(msg.id);
      if (!pending) return; // a reply to a cancelled or timed-out call
      this.pending.delete(msg.id);
      pending.cleanup();
      if (msg.error && typeof msg.error === "object") {
        const err = msg.error as { code?: unknown; message?: unknown; data?: unknown };
        const code = replyCode(err);
        const message = typeof err.message === "string" ? err.message : "the bridge reported an error";
        pending.reject(new BridgeError(code, `${pending.method}: ${message}`, { data: err.data }));
      } else {
        pending.resolve(msg.result);
      }
    } else if (msg.error) {
      const err = msg.error as { message?: unknown };
      this.opts.logger.warn(`memory-palace: bridge rejected a request line: ${String(err.message)}`);
    }
  }

  /** Keep the newest wakes (only the last batch of a killed bridge can be unrecorded). */
  private noteReceived(event: string, data: unknown): void {
    const key = event === "new_message" ? "message_id" : event === "new_memory" ? "memory_id" : undefined;
    const d = data as Record<string, unknown> | undefined;
    if (!key || !d || !Number.isSafeInteger(d[key]) || !Array.isArray(d.recipients)) return;
    this.received.push({ [key]: d[key], recipients: d.recipients, ...(typeof d.database === "string" ? { database: d.database } : {}) });
    if (this.received.length > RECEIVED_KEPT) this.received.splice(0, this.received.length - RECEIVED_KEPT);
  }

  private onReadyLine(proc: Proc, line: Record<string, unknown>): void {
    proc.ready = true;
    this.stateValue = "ready";
    const info = this.readyInfo(proc, line);
    const dbError = (line.database_error as { message?: unknown } | undefined)?.message;
    if (dbError) this.opts.logger.warn(`memory-palace: the bridge started without its default database: ${String(dbError)}`);
    const extensions = info.extensions.length ? `, extensions ${info.extensions.join(", ")}` : "";
    const who = info.identity
      ? `, identity ${info.identity.instance ?? "(no instance configured)"} (${info.identity.role}, ${info.identity.verified ? "verified by token" : "unverified: no token"})`
      : "";
    this.opts.logger.info(
      `memory-palace: bridge ready (pid ${info.pid}, version ${info.version ?? "?"}, ${info.tools.length} tools${extensions}${who})`,
    );
    if (info.identityError) this.opts.logger.error(`memory-palace: the bridge's identity was refused: ${info.identityError}`);
    this.extensionsValue = info.extensions;
    this.identityValue = info.identity;
    this.identityErrorValue = info.identityError;
    if (this.lastFailure) {
      this.health?.clearFailure();
      this.lastFailure = undefined;
    }
    proc.stableTimer = setTimeout(() => (this.failures = 0), this.opts.stableAfterMs ?? 30_000);
    proc.stableTimer.unref();
    let targets: ServedInstance[] = [];
    try {
      targets = [...(this.opts.served?.() ?? [])];
    } catch (error) {
      this.opts.logger.error(`memory-palace: could not list the instances to serve: ${String(error)}`);
    }
    this.servedInstances.onReady(proc.generation, targets, info.instanceId);
    if (proc.paused && (this.opts.delivering?.() ?? true)) void this.resumeDelivery();
    proc.settleStart?.(undefined, info);
    for (const waiter of this.restartWaiters.splice(0)) waiter.resolve(info);
    try {
      this.opts.onReady?.(info);
    } catch (error) {
      this.opts.logger.error(`memory-palace: ready handler failed: ${String(error)}`);
    }
  }

  private onStderr(proc: Proc, chunk: string): void {
    proc.stderrBuffer += chunk;
    let newline: number;
    while ((newline = proc.stderrBuffer.indexOf("\n")) >= 0) {
      const line = proc.stderrBuffer.slice(0, newline).trimEnd();
      proc.stderrBuffer = proc.stderrBuffer.slice(newline + 1);
      if (!line) continue;
      proc.stderrTail.push(line);
      if (proc.stderrTail.length > STDERR_TAIL) proc.stderrTail.shift();
      const text = `memory-palace bridge: ${line}`;
      const { logger } = this.opts;
      if (/\b(ERROR|CRITICAL)\b|Traceback/.test(line)) logger.error(text);
      else if (/\bWARNING\b/.test(line)) logger.warn(text);
      else (logger.debug ?? logger.info).call(logger, text);
    }
  }

  private onClose(proc: Proc, code: number | null, signal: NodeJS.Signals | null): void {
    if (proc.ended) return;
    proc.ended = true;
    clearTimeout(proc.readyTimer);
    clearTimeout(proc.stableTimer);
    if (proc.settleStart) {
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      proc.settleStart(this.unavailable(`\`${describe(this.opts.launch)}\` ${how} before it was ready`, undefined, proc));
    }
    if (this.proc !== proc) return;
    if (this.stateValue === "stopping" || this.stateValue === "stopped") return;
    if (!proc.ready) return; // start failures are handled by onStartFailed
    const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
    const tail = proc.stderrTail.length ? `\nbridge stderr (last lines):\n${proc.stderrTail.join("\n")}` : "";
    const error = new BridgeError(
      PLUGIN_CODES.exited,
      `the Memory Palace bridge ${how}; the call was lost and the bridge is restarting. Retry the call.${tail}`,
    );
    this.opts.logger.error(error.message);
    this.failPending(error);
    this.startPromise = undefined;
    this.scheduleRestart(error);
  }

  private onStartFailed(error: Error): void {
    this.opts.logger.error(error.message);
    this.failPending(error);
    if (this.stateValue === "stopping" || this.stateValue === "stopped") return;
    this.scheduleRestart(error);
  }

  private scheduleRestart(error: Error): void {
    this.lastFailure = error;
    this.health?.reportFailure(error);
    const backoff = this.opts.backoff ?? DEFAULT_BACKOFF;
    const delay = Math.min(backoff.maxMs, backoff.initialMs * 2 ** this.failures);
    this.failures++;
    this.stateValue = "backoff";
    this.opts.logger.warn(`memory-palace: restarting the bridge in ${delay} ms (attempt ${this.failures})`);
    clearTimeout(this.restartTimer);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this.stateValue !== "backoff") return;
      this.stateValue = "idle";
      this.startPromise = undefined;
      this.start().catch(() => {
        /* onStartFailed already logged, reported and scheduled the next attempt */
      });
    }, delay);
    this.restartTimer.unref();
  }

  private waitForRestart(): Promise<ReadyInfo> {
    return new Promise((resolve, reject) => this.restartWaiters.push({ resolve, reject }));
  }

  private cancel(id: number, error: Error): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    pending.cleanup();
    pending.reject(error);
    const proc = this.proc;
    if (proc?.ready && !proc.ended && !pending.method.startsWith("_")) {
      this.write(proc, { id: this.nextId++, method: "_cancel", params: { id } });
    }
  }

  private failPending(error: Error): void {
    for (const [id, pending] of this.pending) {
      this.pending.delete(id);
      pending.cleanup();
      pending.reject(error);
    }
  }

  private write(proc: Proc, message: Record<string, unknown>): void {
    if (proc.ended || !proc.child.stdin.writable) return;
    proc.child.stdin.write(`${JSON.stringify(message)}\n`);
  }
}

/** The ready line's identity {instance, role, verified} or identity_error message (never a token). */
function identityOf(line: Record<string, unknown> | undefined): { identity?: BridgeIdentity; identityError?: string } {
  const raw = line?.identity as { instance?: unknown; role?: unknown; verified?: unknown } | undefined;
  const out: { identity?: BridgeIdentity; identityError?: string } = {};
  if (raw && typeof raw === "object") {
    out.identity = {
      instance: typeof raw.instance === "string" ? raw.instance : null,
      role: typeof raw.role === "string" ? raw.role : "?",
      verified: raw.verified === true,
    };
  }
  const error = (line?.identity_error as { message?: unknown } | undefined)?.message;
  if (typeof error === "string") out.identityError = error;
  return out;
}

function strings(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === "string") : [];
}

function describe(launch: BridgeLaunch): string {
  return [launch.command, ...launch.args].join(" ");
}

function abortError(method: string, signal?: AbortSignal): BridgeError {
  return new BridgeError(PLUGIN_CODES.aborted, `${method} was aborted by the caller; the bridge was told to cancel it`, {
    cause: signal?.reason,
  });
}

async function settlesWithin(promise: Promise<void>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Wait for a start with the call's own budget and abort signal. */
async function withDeadline<T>(promise: Promise<T>, ms: number, signal: AbortSignal | undefined, method: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new BridgeError(PLUGIN_CODES.timeout, `${method} timed out after ${ms} ms waiting for the bridge to start`)),
      ms,
    );
    onAbort = () => reject(abortError(method, signal));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
  try {
    return await Promise.race([promise, guard]);
  } finally {
    clearTimeout(timer);
    if (onAbort) signal?.removeEventListener("abort", onAbort);
  }
}
