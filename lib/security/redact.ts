// Redaction, in one place: what the distributor and relay() remove from any text that leaves
// them (log lines, error messages, attempt reasons, the trace, hook events, relay error bodies).
//
// Order matters. Channel keys go first, longest first, then the caller's values (credentials,
// affinity values), longest first, then generic token shapes. Were a caller's value removed
// first, a caller could choose it as a piece of a channel key (`prompt_cache_key: "sk-"`) and
// break the key apart so that its rest no longer matches: `[REDACTED]upstream-alpha-S3CRET`.
import type { IncomingHttpHeaders } from 'node:http';

export const REDACTED = '[REDACTED]';

/**
 * @internal The method of `res.locals.distribution` that lists the caller's values to redact
 * (credentials, the raw affinity value): how relay() reaches them without a public field.
 */
export const REQUEST_SECRETS: unique symbol = Symbol('express-channel-distributor.requestSecrets');

/** A distribution that can list the caller's values to redact. */
export interface HasRequestSecrets {
  [REQUEST_SECRETS]?(): string[];
}

/** The caller's values to redact for a request (empty when there is no distribution). */
export function requestSecrets(distribution: unknown): string[] {
  const d = distribution as HasRequestSecrets | undefined;
  return typeof d?.[REQUEST_SECRETS] === 'function' ? d[REQUEST_SECRETS]() : [];
}

/** Secrets shorter than this are not searched for (a 1-2 character value would shred any text). */
const MIN_SECRET = 3;

/** Headers that carry a caller's credentials (OpenAI, Anthropic, Gemini, Azure styles). */
export const CREDENTIAL_HEADERS = ['authorization', 'proxy-authorization', 'x-api-key', 'x-goog-api-key', 'api-key'] as const;

function byLengthDesc(list: ReadonlyArray<string | undefined>): string[] {
  const out: string[] = [];
  for (const s of list) if (typeof s === 'string' && s.length >= MIN_SECRET && !out.includes(s)) out.push(s);
  return out.length > 1 ? out.sort((a, b) => b.length - a.length) : out;
}

function removeAll(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) if (out.includes(s)) out = out.split(s).join(REDACTED);
  return out;
}

/** Masks `Bearer ...` and `sk-...` style tokens inside free text (also used by the log format). */
export function redactText(text: string): string {
  return text
    .replace(/(bearer\s+)[^\s"',;]+/gi, `$1${REDACTED}`)
    .replace(/\bsk-[A-Za-z0-9_\-]{6,}/g, REDACTED);
}

/**
 * Removes channel keys (first, longest first), then the caller's values (longest first), then
 * bearer / `sk-` token shapes from `text`.
 */
export function redact(text: string, channelKeys: ReadonlyArray<string | undefined>, callerValues: ReadonlyArray<string | undefined> = []): string {
  let out = removeAll(text, byLengthDesc(channelKeys));
  if (callerValues.length) out = removeAll(out, byLengthDesc(callerValues));
  return redactText(out);
}

/**
 * The caller's credential values, for redaction: full header values and bare tokens, and the
 * Gemini-style `key` query parameter (any case) of `url` when given.
 */
export function callerCredentials(headers: IncomingHttpHeaders, url?: string): string[] {
  const out: string[] = [];
  for (const h of CREDENTIAL_HEADERS) {
    const v = headers[h];
    for (const s of Array.isArray(v) ? v : v ? [v] : []) {
      out.push(s);
      const bare = s.replace(/^(bearer|basic)\s+/i, '');
      if (bare !== s) out.push(bare);
    }
  }
  const q = url === undefined ? -1 : url.indexOf('?');
  if (q !== -1) {
    for (const [k, v] of new URLSearchParams((url as string).slice(q + 1))) if (v && k.toLowerCase() === 'key') out.push(v);
  }
  return out;
}

/** Any value -> a message (for errors a setup or a relay reports). */
export function errorText(e: unknown, fallback = 'failed'): string {
  if (e instanceof Error) return e.message;
  if (typeof e === 'string') return e;
  if (e && typeof e === 'object') {
    const o = e as { message?: unknown; error?: { message?: unknown } };
    if (typeof o.message === 'string') return o.message;
    if (o.error && typeof o.error === 'object' && typeof o.error.message === 'string') return o.error.message;
  }
  return fallback;
}
