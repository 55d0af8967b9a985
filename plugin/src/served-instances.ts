/**
 * The instances the bridge should serve (deliver `new_message` events for), and their
 * announcement with `_subscribe {instance, database?}`. A new bridge process serves only its own
 * instance and its callers, so every ready line announces all of them again (each `_subscribe`
 * carries the instance as its `caller`, which a token must allow); a failed
 * announcement is retried with capped exponential backoff until the running bridge holds it.
 */
import { BridgeError } from "./errors.js";
import type { ServedInstance } from "./sessions.js";

export interface AnnounceTransport {
  call(method: string, params: Record<string, unknown>, options: { timeoutMs: number; caller?: string }): Promise<unknown>;
  /** The generation of the running bridge if it is ready, else undefined (never start one). */
  readyGeneration(): number | undefined;
}

export interface ServedInstancesOptions {
  readonly transport: AnnounceTransport;
  readonly logger: { warn(message: string): void };
  /** Budget of one `_subscribe` (it may start a listener or create a named database). */
  readonly timeoutMs: number;
  readonly backoff: { readonly initialMs: number; readonly maxMs: number };
}

/** Refusals that a retry cannot fix (a bad instance name, a token that may not be it): dropped. */
const PERMANENT = new Set(["INVALID_PARAMS", "METHOD_NOT_FOUND", "INVALID_REQUEST", "PERMISSION_DENIED"]);

function keyOf(target: ServedInstance): string {
  return `${target.instance}\u0000${target.database ?? ""}`;
}

function paramsOf(target: ServedInstance): Record<string, unknown> {
  return target.database ? { instance: target.instance, database: target.database } : { instance: target.instance };
}

export class ServedInstances {
  private readonly opts: ServedInstancesOptions;
  private readonly wanted = new Map<string, ServedInstance>();
  /** Keys the bridge of generation `heldBy` acknowledged. */
  private held = new Set<string>();
  private heldBy: number | undefined;
  private readonly inFlight = new Map<string, Promise<void>>();
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private reportedValue: readonly string[] = [];

  constructor(opts: ServedInstancesOptions) {
    this.opts = opts;
  }

  /** The instances the bridge said it serves (its latest `_subscribe`/`_unsubscribe` answer). */
  get reported(): readonly string[] {
    return this.reportedValue;
  }

  /** Announcements the running bridge has not acknowledged (yet). */
  get unannounced(): number {
    return [...this.wanted.keys()].filter((key) => !this.held.has(key)).length;
  }

  /**
   * Serve `instance` (in `database`; the default when omitted). Resolves once the running bridge
   * acknowledged it, or at once when no bridge is ready (the next ready line announces it).
   * A failure rejects; the announcement is still retried with backoff until it holds.
   */
  serve(instance: string, database?: string): Promise<void> {
    const target: ServedInstance = database ? { instance, database } : { instance };
    const key = keyOf(target);
    this.wanted.set(key, target);
    return this.held.has(key) ? Promise.resolve() : this.announce(key);
  }

  /** Stop serving `instance` (the bridge stops delivering for it in every database). */
  async unserve(instance: string, database?: string): Promise<void> {
    let known = false;
    for (const [key, target] of this.wanted) {
      if (target.instance !== instance) continue;
      known = true;
      this.wanted.delete(key);
      this.held.delete(key);
    }
    if (!known || this.opts.transport.readyGeneration() === undefined) return;
    const result = await this.opts.transport.call("_unsubscribe", paramsOf(database ? { instance, database } : { instance }), { timeoutMs: this.opts.timeoutMs });
    this.noteReported(result);
  }

  /** A bridge process printed its ready line: it holds nothing yet, so announce everything. */
  onReady(generation: number, targets: Iterable<ServedInstance>, ownInstance?: string): void {
    this.held = new Set();
    this.heldBy = generation;
    this.reportedValue = ownInstance ? [ownInstance] : [];
    for (const target of targets) this.wanted.set(keyOf(target), target);
    this.announceAll();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private announceAll(): void {
    for (const key of this.wanted.keys()) {
      if (!this.held.has(key)) this.announce(key).catch(() => undefined);
    }
  }

  private announce(key: string): Promise<void> {
    const running = this.inFlight.get(key);
    if (running) return running;
    const target = this.wanted.get(key);
    const generation = this.opts.transport.readyGeneration();
    if (!target || generation === undefined || this.stopped) return Promise.resolve();
    // Sent as the instance itself: the bridge checks that this gateway may receive its messages.
    const done = this.opts.transport.call("_subscribe", paramsOf(target), { timeoutMs: this.opts.timeoutMs, caller: target.instance }).then(
      (result) => {
        // Acknowledged by an older process (restarted meanwhile): its ready line announces again.
        if (this.heldBy !== generation || !this.wanted.has(key)) return;
        this.held.add(key);
        this.failures = 0;
        this.noteReported(result);
      },
      (error: unknown) => {
        const what = `${target.instance}${target.database ? ` in database ${target.database}` : ""}`;
        if (error instanceof BridgeError && PERMANENT.has(error.code)) {
          this.wanted.delete(key);
          this.opts.logger.warn(`memory-palace: the bridge refused to deliver messages for ${what}; not retrying: ${error.message}`);
        } else {
          this.opts.logger.warn(`memory-palace: could not ask the bridge to deliver messages for ${what}; will retry: ${String(error)}`);
          this.scheduleRetry();
        }
        throw error;
      },
    ).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, done);
    return done;
  }

  private scheduleRetry(): void {
    if (this.timer || this.stopped) return;
    const { initialMs, maxMs } = this.opts.backoff;
    const delay = Math.min(maxMs, initialMs * 2 ** this.failures);
    this.failures++;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      // No bridge ready: nothing to do, its ready line announces everything.
      if (this.opts.transport.readyGeneration() !== undefined) this.announceAll();
    }, delay);
    this.timer.unref();
  }

  /** Record the instances a bridge reply says it serves (`_subscribe`, `_unsubscribe`, `_deliver`). */
  noteReported(result: unknown): void {
    const served = (result as { served?: unknown } | null)?.served;
    if (Array.isArray(served)) this.reportedValue = served.filter((s): s is string => typeof s === "string");
  }
}
