/**
 * Errors the plugin throws. BridgeError carries the bridge's protocol or domain code
 * (INVALID_PARAMS, TOOL_ERROR, TIMEOUT, BRIDGE_UNAVAILABLE, ...) so callers can branch on it.
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
