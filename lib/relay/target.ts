// Where relay() sends a request: the channel's base URL (parsed once per channel view) plus the
// incoming path, with a duplicated version segment removed.
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
