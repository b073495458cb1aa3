// Request parsing: the model and body group, from the body, the path and the query.
import { isPlainObject } from '../check';
import type { Request } from 'express';
import { badRequest } from '../errors';
import type { ExtractedRequest } from '../types';
import type { Steps } from '../steps';
import { bodyAlreadyRead, bodyKind, markBodyRead, multipartField, readRaw } from './body';

export interface ParsedRequest {
  path: string;
  model: string;
  bodyGroup?: string;
  /** The parsed body object when there is one (for body key sources). */
  body?: Record<string, unknown>;
}

export interface ParseConfig {
  bodyLimit: number;
  multipart: boolean;
  extractModel?: (req: Request) => string | ExtractedRequest | undefined | Promise<string | ExtractedRequest | undefined>;
}

/** Pathname of `req.originalUrl`, so mounting at `/` or `/v1` behaves the same. */
export function pathOf(req: Request): string {
  const url = req.originalUrl ?? req.url;
  const q = url.indexOf('?');
  return q === -1 ? url : url.slice(0, q);
}

function queryOf(req: Request): URLSearchParams | undefined {
  const url = req.originalUrl ?? req.url;
  const q = url.indexOf('?');
  return q === -1 ? undefined : new URLSearchParams(url.slice(q + 1));
}

const DEFAULT_MODELS: Array<[string, string]> = [
  ['/v1/moderations', 'text-moderation-stable'],
  ['/v1/images/generations', 'dall-e'],
  ['/v1/audio/speech', 'tts-1'],
  ['/v1/audio/transcriptions', 'whisper-1'],
  ['/v1/audio/translations', 'whisper-1'],
];

function stringField(body: Record<string, unknown> | undefined, field: 'model' | 'group'): string | undefined {
  if (!body || !Object.prototype.hasOwnProperty.call(body, field)) return undefined;
  const v = body[field];
  if (v === null || v === undefined) return undefined;
  if (typeof v !== 'string') throw badRequest(`Invalid request: field ${field} must be a string`);
  return v;
}

/** The body object a parser (express.json(), urlencoded, raw, text) already left on the request. */
function parsedBody(req: Request): Record<string, unknown> | undefined {
  const b: unknown = req.body;
  if (isPlainObject(b)) return b;
  const kind = bodyKind(req.headers['content-type']);
  // express.raw() / express.text() consumed the stream and left the bytes: read the fields
  // from them, leaving req.body as the user's parser set it.
  if ((Buffer.isBuffer(b) || typeof b === 'string') && (kind === 'json' || kind === 'form')) {
    const raw = Buffer.isBuffer(b) ? b : Buffer.from(b, 'utf8');
    return kind === 'json' ? parseJsonBody(raw) : parseFormBody(raw);
  }
  if (kind === 'json' && b !== undefined && b !== null && !(typeof b === 'string' && b === '')) {
    throw badRequest('Invalid request: the JSON body must be an object');
  }
  return undefined;
}

/** Reads the body when no parser did, and returns the parsed object (if any). */
function* readBody(req: Request, cfg: ParseConfig): Steps<{ body?: Record<string, unknown>; multipartModel?: string }> {
  const ct = req.headers['content-type'];
  const kind = bodyKind(ct);
  if (kind === 'json') {
    const raw = (yield readRaw(req, cfg.bodyLimit)) as Buffer;
    const parsed = parseJsonBody(raw);
    markBodyRead(req, raw, parsed ?? {});
    return { body: parsed };
  }
  if (kind === 'form') {
    const raw = (yield readRaw(req, cfg.bodyLimit)) as Buffer;
    const body = parseFormBody(raw);
    markBodyRead(req, raw, body);
    return { body };
  }
  if (kind === 'multipart' && cfg.multipart) {
    const raw = (yield readRaw(req, cfg.bodyLimit)) as Buffer;
    const model = multipartField(raw, ct as string, 'model');
    (req as { _body?: boolean })._body = true;
    req.rawBody = raw;
    return { multipartModel: model };
  }
  return {};
}

/** A JSON body: undefined when blank, else it must be an object (400 otherwise). */
function parseJsonBody(raw: Buffer): Record<string, unknown> | undefined {
  if (raw.length === 0 || isBlank(raw)) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString('utf8'));
  } catch {
    throw badRequest('Invalid request: invalid JSON request body');
  }
  if (!isPlainObject(parsed)) throw badRequest('Invalid request: the JSON body must be an object');
  return parsed;
}

function parseFormBody(raw: Buffer): Record<string, unknown> {
  const body: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  for (const [k, v] of new URLSearchParams(raw.toString('utf8'))) if (!(k in body)) body[k] = v;
  return body;
}

function isBlank(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) {
    const c = buf[i];
    if (c !== 0x20 && c !== 0x0a && c !== 0x0d && c !== 0x09) return false;
  }
  return true;
}

/** Parses the model and the body group (docs/channels-and-selection.md). Throws 400/413 DistributorErrors. */
export function* parseRequest(req: Request, cfg: ParseConfig): Steps<ParsedRequest> {
  const path = pathOf(req);
  const { body, multipartModel } = bodyAlreadyRead(req) ? { body: parsedBody(req), multipartModel: undefined } : yield* readBody(req, cfg);
  if (cfg.extractModel) {
    let model: string | undefined;
    let bodyGroup: string | undefined;
    const out = (yield cfg.extractModel(req)) as string | ExtractedRequest | undefined;
    if (typeof out === 'string') model = out;
    else if (out && typeof out === 'object') {
      if (out.model !== undefined && out.model !== null && typeof out.model !== 'string') throw badRequest('Invalid request: extractModel returned a non-string model');
      if (out.group !== undefined && out.group !== null && typeof out.group !== 'string') throw badRequest('Invalid request: extractModel returned a non-string group');
      model = out.model ?? undefined;
      bodyGroup = out.group ?? undefined;
    }
    return { path, model: model ?? '', bodyGroup: bodyGroup || undefined, body };
  }
  return fromBody(req, path, body, multipartModel);
}

/** The model (body, path, query, path defaults) and the body group, in that order of precedence. */
function fromBody(req: Request, path: string, body: Record<string, unknown> | undefined, multipartModel: string | undefined): ParsedRequest {
  let model = multipartModel ?? stringField(body, 'model');
  const bodyGroup = stringField(body, 'group');
  if (path.startsWith('/v1beta/models/') || path.startsWith('/v1/models/')) {
    const rest = path.slice(path.indexOf('/models/') + 8);
    const colon = rest.indexOf(':');
    const fromPath = safeDecode(colon === -1 ? rest : rest.slice(0, colon));
    if (fromPath) model = fromPath;
  } else if (path.startsWith('/v1/realtime')) {
    const q = queryOf(req)?.get('model');
    if (q) model = q;
  }
  if (!model) {
    for (const [prefix, def] of DEFAULT_MODELS) {
      if (path.startsWith(prefix)) {
        model = def;
        break;
      }
    }
  }
  return { path, model: model ?? '', bodyGroup: bodyGroup || undefined, body };
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw badRequest('Invalid request: malformed model in the path');
  }
}

/** The query parameters of the request, parsed lazily once per request. */
export function queryParam(req: Request, key: string): string | undefined {
  const v = req.query?.[key];
  if (typeof v === 'string') return v;
  if (Array.isArray(v) && typeof v[0] === 'string') return v[0];
  return queryOf(req)?.get(key) ?? undefined;
}
