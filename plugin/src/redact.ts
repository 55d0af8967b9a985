/**
 * Secret redaction for auto-capture: well-known credential shapes are replaced with
 * `[REDACTED:<kind>]` before a conversation turn is stored. Patterns, not a model: it catches
 * keys with a recognisable prefix or a `password=`-style label, not an unlabelled random string.
 */

interface Rule {
  readonly kind: string;
  readonly pattern: RegExp;
  /** Which capture group holds the secret (0: the whole match). */
  readonly group?: number;
}

const RULES: readonly Rule[] = [
  { kind: "private-key", pattern: /-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)/g },
  { kind: "memory-palace-token", pattern: /\bmpt_[0-9a-f]{12}_[A-Za-z0-9_-]{20,}/g },
  { kind: "anthropic-key", pattern: /\bsk-ant-[A-Za-z0-9_-]{20,}/g },
  { kind: "openai-key", pattern: /\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}/g },
  { kind: "stripe-key", pattern: /\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}/g },
  { kind: "github-token", pattern: /\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})/g },
  { kind: "gitlab-token", pattern: /\bglpat-[A-Za-z0-9_-]{20,}/g },
  { kind: "slack-token", pattern: /\bxox[abposr]-[A-Za-z0-9-]{10,}/g },
  { kind: "aws-access-key", pattern: /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/g },
  { kind: "google-api-key", pattern: /\bAIza[0-9A-Za-z_-]{35}\b/g },
  { kind: "huggingface-token", pattern: /\bhf_[A-Za-z0-9]{30,}/g },
  { kind: "npm-token", pattern: /\bnpm_[A-Za-z0-9]{36}\b/g },
  { kind: "jwt", pattern: /\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g },
  { kind: "bearer-token", pattern: /\b(Bearer\s+)([A-Za-z0-9._~+/=-]{16,})/gi, group: 2 },
  { kind: "url-password", pattern: /\b([a-z][a-z0-9+.-]*:\/\/[^\s:/@]+:)([^\s@/]+)(@)/gi, group: 2 },
  {
    kind: "password",
    pattern: /\b((?:password|passwd|pwd|passphrase|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token|client[_-]?secret)\s*(?:[:=]|\bis\b)\s*["']?)([^\s"',;]{6,})/gi,
    group: 2,
  },
];

export interface Redaction {
  readonly text: string;
  /** Kinds found, once each, in order of the rules. */
  readonly kinds: readonly string[];
}

/** Replace every recognised secret in `text`. */
export function redactSecrets(text: string): Redaction {
  const kinds: string[] = [];
  let out = text;
  for (const rule of RULES) {
    out = out.replace(rule.pattern, (...args: unknown[]) => {
      const match = args[0] as string;
      // Already redacted by an earlier, more specific rule.
      if (match.includes("[REDACTED:")) return match;
      if (!kinds.includes(rule.kind)) kinds.push(rule.kind);
      if (!rule.group) return `[REDACTED:${rule.kind}]`;
      const groups = args.slice(1, -2) as Array<string | undefined>;
      return groups.map((g, i) => (i + 1 === rule.group ? `[REDACTED:${rule.kind}]` : (g ?? ""))).join("");
    });
  }
  return { text: out, kinds };
}
