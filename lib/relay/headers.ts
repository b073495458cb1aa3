// Header handling for relay(): what is forwarded upstream, what is passed back to the client,
// Retry-After parsing, and the secret scrubbing of upstream error text.
import type { IncomingHttpHeaders } from 'node:http';

/** Outgoing request headers as relay() hands them to undici and to the `headers` hook. */
export type RelayHeaders = Record<string, string | string[]>;

/**
 * Never forwarded upstream: hop-by-hop headers (RFC 9110 section 7.6.1), `host` and
 * `content-length` (recomputed), the caller's credentials (`authorization` is replaced by the
 * channel key; `x-api-key`, `api-key`, `x-goog-api-key`, `proxy-authorization` and `cookie`
 * are the caller's, never the upstream's), `expect` (undici rejects it) and `accept-encoding`
 * (the relay reads upstream error bodies, so it asks for identity encoding).
 */
const SKIP_REQUEST = new Set([
  'host', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'proxy-authenticate',
  'te', 'trailer', 'transfer-encoding', 'upgrade', 'content-length', 'expect', 'accept-encoding',
  'authorization', 'x-api-key', 'api-key', 'x-goog-api-key', 'cookie', 'http2-settings',
]);

/**
 * Never passed back to the client: hop-by-hop headers (Node frames the response itself) and
 * `set-cookie` (the upstream's cookies belong to the gateway's session with it, not the caller's).
 */
const SKIP_RESPONSE = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'set-cookie',
]);

/** Names listed in a `Connection` header are hop-by-hop too. */
function connectionTokens(value: string | string[] | undefined): Set<string> | undefined {
  if (!value) return undefined;
  // the common values name no extra header: skip the split
  if (typeof value === 'string' && value.length <= 10) {
    const v = value.toLowerCase();
    if (v === 'keep-alive' || v === 'close') return undefined;
  }
  const list = (Array.isArray(value) ? value.join(',') : value).toLowerCase().split(',');
  let out: Set<string> | undefined;
  for (const t of list) {
    const name = t.trim();
    if (name && name !== 'close' && name !== 'keep-alive') (out ??= new Set()).add(name);
  }
  return out;
}

/** `headers` without the names in `skip`, the names its Connection header lists, and unset values. */
function withoutHopHeaders(headers: Record<string, string | string[] | undefined>, skip: ReadonlySet<string>): RelayHeaders {
  const out: RelayHeaders = {};
  const extra = connectionTokens(headers.connection);
  for (const name in headers) {
    if (skip.has(name) || (extra && extra.has(name))) continue;
    const v = headers[name];
    if (v !== undefined) out[name] = v;
  }
  return out;
}

/** The caller's headers minus everything in SKIP_REQUEST (and Connection-listed names). */
export function forwardRequestHeaders(incoming: IncomingHttpHeaders): RelayHeaders {
  return withoutHopHeaders(incoming, SKIP_REQUEST);
}

/** Upstream response headers to pass back to the client. */
export function forwardResponseHeaders(upstream: Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  return withoutHopHeaders(upstream, SKIP_RESPONSE);
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/**
 * The upstream's retry hint in ms: `retry-after-ms` (OpenAI, Azure), `x-ms-retry-after-ms`, then
 * `Retry-After` as delta-seconds or an HTTP date. Undefined when absent or unparseable.
 */
export function parseRetryAfter(headers: Record<string, string | string[] | undefined>, now = Date.now()): number | undefined {
  const ms = first(headers['retry-after-ms']) ?? first(headers['x-ms-retry-after-ms']);
  if (ms !== undefined && ms.trim() !== '') {
    const n = Number(ms);
    if (Number.isFinite(n) && n >= 0) return Math.ceil(n);
  }
  const ra = first(headers['retry-after'])?.trim();
  if (!ra) return undefined;
  if (/^\d+(\.\d+)?$/.test(ra)) return Math.ceil(Number(ra) * 1000);
  const at = Date.parse(ra);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}

/** Replaces every occurrence of the given secrets (at least 4 characters) with `[REDACTED]`. */
export function scrub(text: string, secrets: ReadonlyArray<string | undefined>): string {
  let out = text;
  for (const s of secrets) if (s && s.length >= 4 && out.includes(s)) out = out.split(s).join('[REDACTED]');
  return out;
}

/** The caller's credential values (full header values and bare tokens), for scrubbing. */
export function callerSecrets(incoming: IncomingHttpHeaders): string[] {
  const out: string[] = [];
  const add = (v: string | string[] | undefined) => {
    const s = first(v);
    if (!s) return;
    out.push(s);
    const bare = s.replace(/^(bearer|basic)\s+/i, '');
    if (bare !== s) out.push(bare);
  };
  add(incoming.authorization);
  add(incoming['x-api-key']);
  add(incoming['api-key']);
  add(incoming['x-goog-api-key']);
  return out;
}
