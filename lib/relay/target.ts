// Where relay() sends a request: the channel's base URL (parsed once per channel view) plus the
// incoming path, with a duplicated version segment removed; the path rule that refuses dot
// segments and absolute-form targets; and the removal of the caller's `key` query parameter.
import type { Channel } from '../types';

/** A channel's parsed base URL. */
export interface UpstreamBase {
  /** `http://host:port` */
  origin: string;
  /** The base URL's path without a trailing slash (`''`, `/v1`, `/openai/v1`). */
  basePath: string;
  /** The base path's last segment when it is an API version (`/v1`, `/v1beta`), for de-duplication. */
  version?: string;
}

const VERSION_SEGMENT = /\/v\d+[a-z0-9]*$/i;
const bases = new WeakMap<Channel, UpstreamBase | string>();

/**
 * Parses `channel.baseUrl` once per channel view. Returns an error message (never containing the
 * URL, which may carry credentials) when it is missing or not an http(s) URL.
 */
export function upstreamBase(channel: Channel): UpstreamBase | string {
  const hit = bases.get(channel);
  if (hit !== undefined) return hit;
  let out: UpstreamBase | string;
  const raw = channel.baseUrl;
  if (typeof raw !== 'string' || raw.trim() === '') {
    out = `channel ${channel.id} has no baseUrl`;
  } else {
    try {
      const u = new URL(raw.trim());
      if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('protocol');
      const basePath = u.pathname.replace(/\/+$/, '');
      const m = VERSION_SEGMENT.exec(basePath);
      out = { origin: u.origin, basePath, version: m ? m[0] : undefined };
    } catch {
      out = `channel ${channel.id} has an invalid baseUrl (an http or https URL is expected)`;
    }
  }
  bases.set(channel, out);
  return out;
}

/**
 * The default path rule: the incoming path and query (`req.originalUrl`, so the mount point does
 * not matter) appended to the base URL's path. When the base path ends with a version segment
 * (`/v1`, `/v1beta`, `/v2`...) and the incoming path starts with the same segment, that segment
 * is kept once: base `https://api.example.com/v1` + `/v1/chat/completions` ->
 * `https://api.example.com/v1/chat/completions`; base `https://example.com/openai` +
 * `/v1/chat/completions` -> `https://example.com/openai/v1/chat/completions`.
 */
export function upstreamPath(base: UpstreamBase, incoming: string): string {
  let rest = incoming;
  const v = base.version;
  if (v && rest.length >= v.length && rest.slice(0, v.length).toLowerCase() === v.toLowerCase()) {
    const c = rest.charCodeAt(v.length);
    // the same segment only: '/v1' followed by end, '/' or '?' (not '/v10' or '/v1beta')
    if (Number.isNaN(c) || c === 0x2f || c === 0x3f) rest = rest.slice(v.length);
  }
  const path = base.basePath + rest;
  if (path === '') return '/';
  return path.charCodeAt(0) === 0x2f ? path : `/${path}`;
}

const ENCODED_SEPARATORS = /%(?:2e|2f|5c)/gi;

function decodeSeparator(m: string): string {
  const c = m.charCodeAt(2) | 0x20; // the escape's last hex digit, lower-cased
  return c === 0x65 /* e */ ? '.' : c === 0x66 /* f */ ? '/' : '\\';
}

/**
 * True when a request path (with or without its query) must not reach an upstream: it has a `.`
 * or `..` segment, raw or percent-encoded (`%2e`, `%2E`, any mix), with `/` or `\` (raw, `%2f`
 * or `%5c`) as separators, also with a `;parameter` (`..;` means `..` to some servers); or it
 * starts with two separators (`//host/x`, `/\host`: a network-path reference to URL parsers).
 *
 * Percent-encoding is decoded once, as every compliant server does: `%252e` is the literal
 * segment `%2e` upstream, neither `.` nor `..`, and passes.
 */
export function unsafePath(pathAndQuery: string): boolean {
  const q = pathAndQuery.indexOf('?');
  const path = q === -1 ? pathAndQuery : pathAndQuery.slice(0, q);
  // the common path (`/v1/chat/completions`) has no dot, escape or backslash and one leading slash
  if (!/[.%\\]/.test(path) && !(path.charCodeAt(0) === 0x2f && path.charCodeAt(1) === 0x2f)) return false;
  const d = path.replace(ENCODED_SEPARATORS, decodeSeparator);
  if (/^[/\\]{2}/.test(d)) return true;
  for (const seg of d.split(/[/\\]/)) {
    const semi = seg.indexOf(';');
    const s = semi === -1 ? seg : seg.slice(0, semi);
    if (s === '.' || s === '..') return true;
  }
  return false;
}

/**
 * Where the default path rule refuses a request: a target not in origin form (absolute form
 * `http://host/x`, asterisk form `*`) or an unsafe path (see unsafePath).
 */
export function refusedTarget(originalUrl: string): boolean {
  return originalUrl.charCodeAt(0) !== 0x2f || unsafePath(originalUrl);
}

/** The decoded, lower-cased name of one `name=value` query part. */
function paramName(part: string): string {
  const eq = part.indexOf('=');
  const raw = (eq === -1 ? part : part.slice(0, eq)).replace(/\+/g, ' ');
  try {
    return decodeURIComponent(raw).toLowerCase();
  } catch {
    return raw.toLowerCase();
  }
}

/**
 * `pathAndQuery` without the caller's `key` query parameter (Gemini style credential), compared
 * after percent-decoding and case-insensitively (`Key`, `KEY`, `%6Bey`); every other part of the
 * query stays byte-identical, in order. Unchanged (the same string) when there is none.
 */
export function withoutKeyParam(pathAndQuery: string): string {
  const q = pathAndQuery.indexOf('?');
  if (q === -1) return pathAndQuery;
  const query = pathAndQuery.slice(q + 1);
  if (!/[k%]/i.test(query)) return pathAndQuery;
  const parts = query.split('&');
  const kept = parts.filter((p) => paramName(p) !== 'key');
  if (kept.length === parts.length) return pathAndQuery;
  const path = pathAndQuery.slice(0, q);
  return kept.length ? `${path}?${kept.join('&')}` : path;
}
