/**
 * Errors the plugin throws. BridgeError carries a machine-readable code callers can branch on:
 * - a tool refusal keeps the bridge's domain code (NOT_FOUND, DATABASE_MISSING, CONFLICT,
 *   PERMISSION_DENIED, BACKEND_UNAVAILABLE, EMBEDDER_UNAVAILABLE, INVALID_PARAMS, CONFIG_ERROR);
 * - a protocol failure keeps the bridge's protocol code (PARSE_ERROR, INVALID_REQUEST,
 *   METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR);
 * - the plugin's own failures use PLUGIN_CODES (BRIDGE_UNAVAILABLE, TIMEOUT, ...).
 */

export class BridgeError extends Error {
  readonly code: string;
  readonly data: unknown;

  constructor(code: string, message: string, options?: { cause?: unknown; data?: unknown }) {
    super(message.startsWith("memory-palace:") ? message : `memory-palace: ${message}`, {
      cause: options?.cause,
    });
    this.name = "BridgeError";
    this.code = code;
    this.data = options?.data;
  }
}

/** Codes produced by the plugin itself (the bridge's own codes pass through unchanged). */
export const PLUGIN_CODES = {
  unavailable: "BRIDGE_UNAVAILABLE",
  exited: "BRIDGE_EXITED",
  timeout: "TIMEOUT",
  aborted: "ABORTED",
  invalidParams: "INVALID_PARAMS",
  stopped: "BRIDGE_STOPPED",
} as const;

/** The code for an error reply that names none: the bridge broke its protocol (a bug). */
export const FALLBACK_CODE = "INTERNAL_ERROR";

/** The code of a bridge error reply: `error.code`, else `error.data.kind`, else INTERNAL_ERROR. */
export function replyCode(error: { code?: unknown; data?: unknown }): string {
  if (typeof error.code === "string" && error.code) return error.code;
  const kind = (error.data as { kind?: unknown } | undefined)?.kind;
  return typeof kind === "string" && kind ? kind : FALLBACK_CODE;
}
