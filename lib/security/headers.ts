// The header policy of relay(): which caller headers go upstream (an allowlist: no credentials,
// cookies, account selectors or hop-by-hop headers unless named) and what comes back to the
// caller (never the channel key). Part of the trust boundary, next to redaction (./redact.ts).
import type { IncomingHttpHeaders } from 'node:http';
import { redact } from './redact';

/** Outgoing request headers as relay() hands them to undici and to the `headers` hook. */
export type RelayHeaders = Record<string, string | string[]>;

/**
 * The caller headers relay() forwards by default: what describes the body and the answer the
 * caller wants, and the providers' API version and beta selectors. Everything else (credentials,
 * cookies, account selectors such as `openai-organization` / `openai-project`, tracing and proxy
 * headers) is only forwarded when named in `forwardHeaders`.
 */
export const DEFAULT_FORWARD_HEADERS: readonly string[] = Object.freeze([
  'content-type', 'accept', 'user-agent', 'openai-beta', 'anthropic-version', 'anthropic-beta', 'x-request-id',
]);

/**
 * Never forwarded, even when `forwardHeaders` names them: hop-by-hop headers (RFC 9110 section
 * 7.6.1; `proxy-authorization` is the caller's credential for a proxy, consumed by the first one),
 * `host` and `content-length` (undici sets them for the upstream), `expect` (undici rejects it),
 * `accept-encoding` (the relay reads and redacts upstream error bodies, so it asks for identity
 * encoding) and `content-encoding` (decided by the body rule: kept only with the caller's
 * unchanged bytes, see relay.ts).
 */
const NEVER_FORWARD: ReadonlySet<string> = new Set([
  'host', 'content-length', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authorization', 'te', 'trailer',
  'transfer-encoding', 'upgrade', 'http2-settings', 'expect', 'accept-encoding', 'content-encoding',
]);

/**
 * Never passed back to the client: hop-by-hop headers (Node frames the response itself) and
 * `set-cookie` (the upstream's cookies belong to the gateway's session with it, not the caller's).
 */
const SKIP_RESPONSE: ReadonlySet<string> = new Set([
  'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'set-cookie',
]);

/** An RFC 9110 field name (token). */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** The compiled request header allowlist of one relay(). */
export interface HeaderAllowlist {
  /** Lower-case names (the defaults plus the named strings), minus the never-forwarded ones. */
  readonly names: readonly string[];
  readonly nameSet: ReadonlySet<string>;
  /** Patterns tested against the lower-case name (without `g` / `y`, so `test()` keeps no state). */
  readonly patterns: readonly RegExp[];
}

/**
 * Validates and compiles `relay({ forwardHeaders })`: strings are header names (compared
 * case-insensitively), a RegExp tests the lower-case name. Throws a TypeError for anything else,
 * and for a string naming a header that is never forwarded (`host`, `content-length`, hop-by-hop...).
 */
export function compileForwardHeaders(spec: unknown): HeaderAllowlist {
  const names = new Set<string>(DEFAULT_FORWARD_HEADERS);
  const patterns: RegExp[] = [];
  if (spec !== undefined) {
    if (!Array.isArray(spec)) throw new TypeError('relay(): forwardHeaders must be an array of header names (strings) or RegExps');
    for (const entry of spec as unknown[]) {
      if (entry instanceof RegExp) {
        patterns.push(new RegExp(entry.source, entry.flags.replace(/[gy]/g, '')));
        continue;
      }
      if (typeof entry !== 'string' || !TOKEN.test(entry)) {
        throw new TypeError(`relay(): forwardHeaders entries must be header names or RegExps (got ${typeof entry === 'string' ? JSON.stringify(entry) : typeof entry})`);
      }
      const name = entry.toLowerCase();
      if (NEVER_FORWARD.has(name)) throw new TypeError(`relay(): forwardHeaders cannot name "${name}": relay() never forwards the caller's (hop-by-hop, set by undici, or decided by the body)`);
      names.add(name);
    }
  }
  const list = [...names];
  return { names: list, nameSet: names, patterns };
}

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

/**
 * The caller's headers relay() forwards: those on the allowlist (Node lower-cases incoming
 * names), never a hop-by-hop one (including names the caller's Connection header lists).
 */
export function forwardRequestHeaders(incoming: IncomingHttpHeaders, allow: HeaderAllowlist): RelayHeaders {
  const out: RelayHeaders = {};
  const extra = connectionTokens(incoming.connection);
  if (allow.patterns.length === 0) {
    // the common case: look the few allowed names up instead of walking every incoming header
    for (const name of allow.names) {
      const v = incoming[name];
      if (v !== undefined && !(extra && extra.has(name))) out[name] = v;
    }
    return out;
  }
  for (const name in incoming) {
    const v = incoming[name];
    if (v === undefined || NEVER_FORWARD.has(name) || (extra && extra.has(name))) continue;
    if (allow.nameSet.has(name) || matchesAny(allow.patterns, name)) out[name] = v;
  }
  return out;
}

function matchesAny(patterns: readonly RegExp[], name: string): boolean {
  for (const p of patterns) if (p.test(name)) return true;
  return false;
}

/** The forms in which a key may appear in a header value (as is, and percent-encoded in a URL). */
function keyForms(key: string): string[] {
  const enc = encodeURIComponent(key);
  return enc === key ? [key] : [key, enc];
}

function containsAny(value: string, forms: readonly string[]): boolean {
  for (const f of forms) if (value.includes(f)) return true;
  return false;
}

/**
 * `value` with the channel key (as is or percent-encoded, e.g. in a `Location` URL's query)
 * replaced by `[REDACTED]`; the value itself when it does not contain it.
 */
export function withoutKey(value: string, key: string | undefined): string {
  if (!key) return value;
  const forms = keyForms(key);
  return containsAny(value, forms) ? redact(value, forms) : value;
}

/**
 * Upstream response headers to pass back to the client: without hop-by-hop headers and
 * `set-cookie`, and with the channel key redacted wherever a value carries it (a `Location`
 * whose query echoes `key=...`, a debug header echoing the Authorization it got).
 */
export function forwardResponseHeaders(upstream: Record<string, string | string[] | undefined>, key?: string): RelayHeaders {
  const out: RelayHeaders = {};
  const extra = connectionTokens(upstream.connection);
  const forms = key ? keyForms(key) : undefined;
  for (const name in upstream) {
    if (SKIP_RESPONSE.has(name) || (extra && extra.has(name))) continue;
    const v = upstream[name];
    if (v === undefined) continue;
    if (!forms) out[name] = v;
    else if (typeof v === 'string') out[name] = containsAny(v, forms) ? redact(v, forms) : v;
    else out[name] = v.map((s) => (containsAny(s, forms) ? redact(s, forms) : s));
  }
  return out;
}
