// The native upstream protocols of relay() (API.md 11.5): how each channel type authenticates,
// where an Azure request goes, and the channel's model mapping (the JSON body's top-level
// `model`, the model segment of a Gemini path). Part of the trust boundary: the caller's
// credentials never reach an upstream whose channel has a key, and a caller's body is only ever
// changed in the bytes of its top-level `model` value.
import { CREDENTIAL_HEADERS } from '../security/redact';
import type { Channel } from '../types';
import type { RelayHeaders } from '../security/headers';
import { withoutKeyParam } from './target';

/** `api-version` of an Azure channel without `apiVersion`. */
export const DEFAULT_AZURE_API_VERSION = '2024-10-21';
/** `anthropic-version` sent to an Anthropic channel when the caller sent none. */
export const DEFAULT_ANTHROPIC_VERSION = '2023-06-01';

/**
 * Removes the caller's credential headers (`authorization`, `x-api-key`, `api-key`,
 * `x-goog-api-key`; present only when named in `forwardHeaders`) from the forwarded headers and
 * returns them, or undefined when there were none (the common case).
 */
export function takeCallerCredentials(headers: RelayHeaders): RelayHeaders | undefined {
  let out: RelayHeaders | undefined;
  for (const name of CREDENTIAL_HEADERS) {
    const v = headers[name];
    if (v === undefined) continue;
    (out ??= {})[name] = v;
    delete headers[name];
  }
  return out;
}

/**
 * The request headers for one attempt on `channel`: the forwarded caller headers (without
 * credentials) plus the channel's own credential in its type's header: `authorization: Bearer`
 * (openai), `api-key` (azure), `x-api-key` and `anthropic-version` (anthropic, the caller's
 * version else 2023-06-01), `x-goog-api-key` (gemini). A channel without a key gets no
 * credential; the caller's named credentials other than `authorization` then go as they came.
 *
 * The common case (an OpenAI channel, no named caller credential) updates `base` in place; the
 * others return a copy, so a key set for one attempt never stays for the next one.
 */
export function channelHeaders(base: RelayHeaders, channel: Channel, caller: RelayHeaders | undefined): RelayHeaders {
  const key = channel.key;
  const type = channel.type ?? 'openai';
  if (type === 'openai' && caller === undefined) {
    if (key) base.authorization = `Bearer ${key}`;
    else if (base.authorization !== undefined) delete base.authorization;
    return base;
  }
  const h: RelayHeaders = { ...base };
  delete h.authorization; // an earlier attempt's `Bearer <key>` (base is updated in place above)
  if (type === 'anthropic' && h['anthropic-version'] === undefined) h['anthropic-version'] = DEFAULT_ANTHROPIC_VERSION;
  if (!key) {
    if (caller) for (const name in caller) if (name !== 'authorization') h[name] = caller[name];
    return h;
  }
  switch (type) {
    case 'azure':
      h['api-key'] = key;
      break;
    case 'anthropic':
      h['x-api-key'] = key;
      break;
    case 'gemini':
      h['x-goog-api-key'] = key;
      break;
    default:
      h.authorization = `Bearer ${key}`;
  }
  return h;
}

/**
 * The upstream model for `requested` on `channel`: its mapping's value, or undefined when the
 * channel maps nothing for it (or maps it to itself). The mapping is a null-prototype object, and
 * only own string values count, so `__proto__` or `constructor` map nothing unless configured.
 */
export function mappedModel(channel: Channel, requested: string): string | undefined {
  const m = channel.modelMapping;
  if (!m || requested === '' || !Object.prototype.hasOwnProperty.call(m, requested)) return undefined;
  const to = m[requested];
  return typeof to === 'string' && to !== '' && to !== requested ? to : undefined;
}

const GEMINI_PREFIXES = ['/v1beta/models/', '/v1/models/'];

function decodeOrSelf(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/**
 * A Gemini path (`/v1beta/models/{model}:generateContent`, `/v1/models/{model}:...`) with its
 * model segment replaced by `mapped` (percent-encoded) when the segment decodes to `requested`;
 * the path itself otherwise. Everything after the segment stays byte-identical.
 */
export function mapGeminiPath(pathAndQuery: string, requested: string, mapped: string): string {
  const prefix = GEMINI_PREFIXES.find((p) => pathAndQuery.startsWith(p));
  if (!prefix) return pathAndQuery;
  const start = prefix.length;
  let end = start;
  while (end < pathAndQuery.length) {
    const c = pathAndQuery.charCodeAt(end);
    if (c === 0x3a /* : */ || c === 0x2f /* / */ || c === 0x3f /* ? */) break;
    end++;
  }
  if (decodeOrSelf(pathAndQuery.slice(start, end)) !== requested) return pathAndQuery;
  return pathAndQuery.slice(0, start) + encodeURIComponent(mapped) + pathAndQuery.slice(end);
}

/** The decoded, lower-cased name of one `name=value` query part. */
function paramName(part: string): string {
  const eq = part.indexOf('=');
  const raw = (eq === -1 ? part : part.slice(0, eq)).replace(/\+/g, ' ');
  return decodeOrSelf(raw).toLowerCase();
}

/**
 * The Azure OpenAI path for an OpenAI-style request: `<base path>/openai/deployments/<model>/<rest>`
 * where `<rest>` is the incoming path after `/v1/` (`chat/completions`, `embeddings`, ...), with
 * `api-version=<apiVersion>` first in the query (the caller's `api-version` is dropped, and with a
 * channel key its `key` too; other parameters stay byte-identical, in order). A base path that
 * ends with `/openai` is not repeated. `model` is percent-encoded.
 */
export function azurePath(basePath: string, incoming: string, model: string, apiVersion: string | undefined, hasKey: boolean): string {
  const q = incoming.indexOf('?');
  const path = q === -1 ? incoming : incoming.slice(0, q);
  let rest = path;
  if (/^\/v1(?:\/|$)/i.test(rest)) rest = rest.slice(3);
  rest = rest.replace(/^\/+/, '');
  const root = /\/openai$/i.test(basePath) ? basePath : `${basePath}/openai`;
  const kept = q === -1 ? [] : incoming.slice(q + 1).split('&').filter((p) => p !== '' && paramName(p) !== 'api-version');
  const query = [`api-version=${encodeURIComponent(apiVersion ?? DEFAULT_AZURE_API_VERSION)}`, ...kept].join('&');
  const out = `${root}/deployments/${encodeURIComponent(model)}${rest ? `/${rest}` : ''}?${query}`;
  return hasKey ? withoutKeyParam(out) : out;
}

// ---- the JSON body's top-level `model` ---------------------------------------------------------

const WS = new Set([0x20, 0x09, 0x0a, 0x0d]);

function skipWs(b: Buffer, i: number): number {
  while (i < b.length && WS.has(b[i])) i++;
  return i;
}

/** Index just past the string starting at `i` (a `"`), or -1. */
function skipString(b: Buffer, i: number): number {
  for (let j = i + 1; j < b.length; j++) {
    const c = b[j];
    if (c === 0x5c) j++;
    else if (c === 0x22) return j + 1;
  }
  return -1;
}

/** Index just past the JSON value starting at `i`, or -1. */
function skipValue(b: Buffer, i: number): number {
  const c = b[i];
  if (c === 0x22) return skipString(b, i);
  if (c === 0x7b || c === 0x5b) {
    let depth = 0;
    for (let j = i; j < b.length; j++) {
      const d = b[j];
      if (d === 0x22) {
        j = skipString(b, j);
        if (j === -1) return -1;
        j--;
      } else if (d === 0x7b || d === 0x5b) depth++;
      else if (d === 0x7d || d === 0x5d) {
        depth--;
        if (depth === 0) return j + 1;
      }
    }
    return -1;
  }
  let j = i;
  while (j < b.length) {
    const d = b[j];
    if (d === 0x2c || d === 0x7d || d === 0x5d || WS.has(d)) break;
    j++;
  }
  return j > i ? j : -1;
}

/** The byte spans of the values of every top-level `model` member of a JSON object, or undefined. */
function modelSpans(b: Buffer): Array<[number, number]> | undefined {
  let i = skipWs(b, 0);
  if (b[i] !== 0x7b) return undefined;
  i = skipWs(b, i + 1);
  const spans: Array<[number, number]> = [];
  if (b[i] === 0x7d) return spans;
  for (;;) {
    if (b[i] !== 0x22) return undefined;
    const keyEnd = skipString(b, i);
    if (keyEnd === -1) return undefined;
    let key = b.toString('utf8', i + 1, keyEnd - 1);
    if (key.includes('\\')) {
      try {
        key = JSON.parse(b.toString('utf8', i, keyEnd)) as string;
      } catch {
        return undefined;
      }
    }
    i = skipWs(b, keyEnd);
    if (b[i] !== 0x3a) return undefined;
    i = skipWs(b, i + 1);
    const end = skipValue(b, i);
    if (end === -1) return undefined;
    if (key === 'model') spans.push([i, end]);
    i = skipWs(b, end);
    if (b[i] === 0x2c) {
      i = skipWs(b, i + 1);
      continue;
    }
    return b[i] === 0x7d ? spans : undefined;
  }
}

/**
 * `body` (JSON bytes) with the value of its top-level `model` replaced by `mapped`, when the
 * model the body names (the last top-level `model`, as JSON.parse reads it) is the string
 * `requested`; every `model` member is replaced, so a parser that keeps the first duplicate sees
 * the mapped name too. Every other byte stays as it was. Undefined when there is nothing to map
 * or the bytes are not one JSON object.
 */
export function mapJsonModel(body: Buffer, requested: string, mapped: string): Buffer | undefined {
  const spans = modelSpans(body);
  if (!spans || spans.length === 0) return undefined;
  const [s, e] = spans[spans.length - 1];
  if (body[s] !== 0x22) return undefined;
  let current: unknown;
  try {
    current = JSON.parse(body.toString('utf8', s, e));
  } catch {
    return undefined;
  }
  if (current !== requested) return undefined;
  const value = Buffer.from(JSON.stringify(mapped));
  const parts: Buffer[] = [];
  let at = 0;
  for (const [from, to] of spans) {
    parts.push(body.subarray(at, from), value);
    at = to;
  }
  parts.push(body.subarray(at));
  return Buffer.concat(parts);
}
