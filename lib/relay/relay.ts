// relay(): an optional Express handler that forwards a request to `res.locals.channel` (an
// OpenAI-compatible, Azure, Anthropic or Gemini upstream by `channel.type`, see ./protocol.ts) with undici, streams the answer back, and asks the distributor for
// another channel (`res.locals.distribution.retry()`) when an attempt fails before the first byte
// reached the client. After that commit point a failure ends the response visibly: an SSE `error`
// event for event streams, an aborted response otherwise; never a clean-looking success.
//
// Trust boundary (docs/security.md, docs/relay.md): only allowlisted caller headers go
// upstream, the caller's `key` query parameter does not when the channel has a key, a decoded body
// loses its `content-encoding`, dot segments and absolute-form targets are refused (400
// `invalid_path`), the channel key never comes back in response headers or error bodies, and no
// upstream request is made (or kept open) for a client that has gone.
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { EventEmitter } from 'node:events';
import type { Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import { bodyKind, parsedFromRaw } from '../request/body';
import { redact, requestSecrets } from '../security/redact';
import type { Channel, Distribution } from '../types';
import { compileForwardHeaders, forwardRequestHeaders, forwardResponseHeaders, withoutKey, type HeaderAllowlist, type RelayHeaders } from '../security/headers';
import { parseRetryAfter } from './retry-after';
import { positiveNumber } from '../check';
import { refusedTarget, unsafePath, upstreamBase, upstreamPath, withoutKeyParam, type UpstreamBase } from './target';
import { azurePath, channelHeaders, mapGeminiPath, mapJsonModel, mappedModel, takeCallerCredentials } from './protocol';
import { JSON_USAGE_BODY_LIMIT, JsonUsageCollector, SseUsageScanner, isJsonContentType } from './usage';
import { hedgeControl, type HedgeControl } from '../run/distribution';
import type { UsageReport } from '../types';

export type { RelayHeaders } from '../security/headers';

/**
 * Codes of the errors relay() itself answers with: `{ error: { message, type: 'upstream_error', code } }`,
 * and `invalid_path` (400, `type: 'invalid_request_error'`) for a path the path rule refuses.
 */
export type RelayErrorCode =
  | 'invalid_path'
  | 'upstream_connection_error'
  | 'upstream_timeout'
  | 'upstream_status'
  | 'stream_interrupted'
  | 'no_channel';

/** One failed upstream attempt, as reported to `onUpstreamError`. Messages are secret-free. */
export interface RelayUpstreamError {
  req: Request;
  /** The id of the channel the failed attempt went to. */
  channelId: number;
  /** 1-based attempt number within the request. */
  attempt: number;
  /** The upstream's status, when it answered with one. */
  status?: number;
  code: RelayErrorCode;
  message: string;
  /** The upstream's retry hint (Retry-After / retry-after-ms), in ms. */
  retryAfterMs?: number;
  /** True when the failure came after the first byte reached the client (no retry possible). */
  committed: boolean;
}

export interface RelayOptions {
  /**
   * Time to wait for the upstream's response headers, per attempt (ms). A non-streamed
   * completion only sends headers when it is done, so keep this above your slowest answer.
   * undici checks timeouts above 1 s with a 1 s resolution. Default 120_000.
   */
  timeoutMs?: number;
  /** Longest silence between two body chunks (ms), per attempt. Default 120_000. */
  bodyTimeoutMs?: number;
  /** TCP connect timeout of the Agent relay() creates (ignored with `dispatcher`). Default 10_000. */
  connectTimeoutMs?: number;
  /** Bytes of an upstream error body read to build the client's error and `retry()`'s reason. Default 65_536. */
  errorBodyLimit?: number;
  /**
   * Maps a request to the path (and query) appended to the channel's base URL path. Default: the
   * pathname and query of `req.originalUrl`, with a version segment that ends the base URL (`/v1`,
   * `/v1beta`, ...) not repeated: base `http://h/v1` + `/v1/chat/completions` -> `http://h/v1/chat/completions`.
   * The default rule answers 400 `invalid_path` for a request target in absolute form
   * (`POST http://host/x`) or with `.` / `..` segments (raw or percent-encoded, `/` or `\`
   * separated) or a leading `//`. A returned path is appended verbatim (no de-duplication) and
   * checked the same way (a `../` in it is refused with 400 `invalid_path`), so the upstream
   * path always starts with the channel's base path. With a channel key, the caller's `key` query
   * parameter is removed from either (other query parameters stay byte-identical).
   *
   * The default rule also speaks the channel's protocol: an `azure` channel gets
   * `/openai/deployments/<model>/<rest>?api-version=<apiVersion, default 2024-10-21>` (`<rest>`
   * is the path after `/v1/`; the caller's `api-version` is replaced), and a channel whose
   * `modelMapping` maps the requested model gets the mapped name in a Gemini path's model segment
   * (`/v1beta/models/{model}:generateContent`). A custom rule gets neither: it builds the path
   * itself from the channel it receives.
   */
  path?: (req: Request, channel: Channel) => string;
  /**
   * Caller headers forwarded upstream in addition to the default allowlist (`content-type`,
   * `accept`, `user-agent`, `openai-beta`, `anthropic-version`, `anthropic-beta`, `x-request-id`).
   * A string is a header name (compared case-insensitively); a RegExp tests the lower-case name.
   * Credentials (`authorization`, `x-api-key`, ...), `cookie` and account selectors
   * (`openai-organization`, `openai-project`) are forwarded only when named here. Hop-by-hop
   * headers, `host`, `content-length`, `expect`, `accept-encoding` and `content-encoding` are never
   * taken from this list (a string naming one throws; a RegExp matching one is ignored);
   * `content-encoding` is forwarded only with the caller's unchanged body bytes. Validated when
   * relay() is created. Default `[]` (the allowlist only).
   */
  forwardHeaders?: ReadonlyArray<string | RegExp>;
  /**
   * Adjusts the upstream request headers per attempt (for example `x-api-key` for an Anthropic
   * upstream); runs after the defaults are built, so it may add anything. Receives a copy it may
   * mutate, or returns a replacement. Default headers: the allowlisted caller headers (see
   * `forwardHeaders`), `content-encoding` only with the caller's unchanged body bytes, plus
   * the channel key in the header of its `type` when it has one: `authorization: Bearer <key>`
   * (openai), `api-key` (azure), `x-api-key` (anthropic, with `anthropic-version`: the caller's,
   * else 2023-06-01), `x-goog-api-key` (gemini). With a channel key, none of the caller's
   * credential headers (`authorization`, `x-api-key`, `api-key`, `x-goog-api-key`) goes
   * upstream, even when named in `forwardHeaders`.
   */
  headers?: (headers: RelayHeaders, ctx: { req: Request; channel: Channel; attempt: number }) => RelayHeaders | void;
  /**
   * Adjusts the headers of a successful upstream answer before they reach the client (for example
   * to drop `openai-organization`). Default: the upstream's headers minus hop-by-hop headers and
   * `set-cookie`, with the channel key (as is or percent-encoded, e.g. in a `Location` URL)
   * replaced by `[REDACTED]` in every value. Receives a fresh object it may mutate, or returns a
   * replacement.
   */
  responseHeaders?: (headers: RelayHeaders, ctx: { req: Request; channel: Channel; status: number }) => RelayHeaders | void;
  /** The undici dispatcher to send with. Default: one keep-alive `Agent` per relay() (closed by `close()`). */
  dispatcher?: Dispatcher;
  /** Observes every failed attempt (before and after the commit point). A throwing hook is ignored. */
  onUpstreamError?: (e: RelayUpstreamError) => void;
  /**
   * Hedging (off by default): when an attempt has no upstream response headers after `afterMs`,
   * one more attempt starts on another channel, only while `retry()` would allow one (retries
   * left, the budget, no skip rule on a used pin, not a named channel) and when the request body
   * can be sent twice (not a streamed body). The first racer to answer with headers wins (an
   * answer of 429, 5xx or no answer at all is that racer's failure, and the other races on);
   * the other is aborted and counts neither as a success nor as a failure. Only the winner is
   * pinned. For an SSE stream the commit point is the winner's first byte. At most one hedge per
   * request.
   */
  hedge?: { afterMs: number };
  /**
   * Report the token usage of each answer that served (`distribution.reportUsage()`, once per
   * request): read from a 2xx JSON body of at most 4 MiB (a copy collected as it passes, parsed at
   * its end) or from an SSE stream scanned event by event as it passes (never buffered; lines and
   * events over 64 KiB are skipped). OpenAI chat and Responses, Anthropic and Gemini shapes.
   * Default true; false when your code reports usage itself.
   */
  reportUsage?: boolean;
}

/** The handler returned by relay(), with its dispatcher and a `close()` for the Agent it created. */
export interface RelayHandler extends RequestHandler {
  readonly dispatcher: Dispatcher;
  /** Closes the Agent relay() created (a `dispatcher` you passed is left alone). */
  close(): Promise<void>;
}

interface Resolved {
  timeoutMs: number;
  bodyTimeoutMs: number;
  errorBodyLimit: number;
  path?: RelayOptions['path'];
  headers?: RelayOptions['headers'];
  responseHeaders?: RelayOptions['responseHeaders'];
  allow: HeaderAllowlist;
  dispatcher: Dispatcher;
  onUpstreamError?: RelayOptions['onUpstreamError'];
  reportUsage: boolean;
  hedgeAfterMs?: number;
}

/** A failed attempt. `committed` failures were already answered to the client. */
interface Failure {
  /** The path rule refused the request (400 `invalid_path`): no upstream call, no retry. */
  refused?: boolean;
  status?: number;
  code: RelayErrorCode;
  message: string;
  retryAfterMs?: number;
  /** The upstream's (scrubbed) error body and its Retry-After, for the final error response. */
  body?: string;
  retryAfter?: string;
  committed: boolean;
}

interface OutBody {
  data?: Buffer | string;
  stream?: Readable;
  /**
   * The caller's bytes as they arrived (the distributor's `req.rawBody`, or the unread stream):
   * only then does the caller's `content-encoding` still describe them.
   */
  verbatim?: boolean;
  /**
   * What a model mapping rewrites (a JSON body): its bytes (only the top-level `model` value
   * changes) or the object that is re-serialised anyway. Absent: the body is never mapped.
   */
  remap?: { bytes: Buffer } | { object: Record<string, unknown> };
  /** The bodies built for mapped model names, once per request. */
  mapped?: Map<string, OutBody>;
}

interface RunState {
  clientGone: boolean;
  /**
   * Aborts the attempt in flight when the client goes away. An EventEmitter (undici listens for
   * 'abort'), not an AbortController: on Node 20 an AbortSignal listener costs ~10 us per request.
   */
  signal: EventEmitter;
  /** The caller's values (credentials, affinity values), computed on the first error body that needs redaction. */
  secrets?: string[];
  /** The answer's usage was reported (once per request). */
  usageReported?: boolean;
  /** The requested model (`distribution.model`): what a channel's `modelMapping` is looked up by. */
  requested: string;
  /** The caller's credential headers taken out of the forwarded ones (named in `forwardHeaders`). */
  callerCredentials?: RelayHeaders;
}

const SSE_HOLD_LIMIT = 1 << 20;

function relayErrorBody(message: string, code: RelayErrorCode | string): string {
  return JSON.stringify({ error: { message, type: 'upstream_error', code } });
}

function hasBody(req: Request): boolean {
  if (req.headers['transfer-encoding'] !== undefined) return true;
  const cl = req.headers['content-length'];
  return cl !== undefined && cl !== '0';
}

/**
 * What to send upstream: the raw bytes the distributor read while `req.body` is still the
 * object it parsed from them (or was never set); a replaced body re-serialised (JSON, or
 * urlencoded for form requests); otherwise the unread request stream (not replayable).
 *
 * The caller's `content-encoding` goes with the first and the last only. The distributor reads
 * raw bytes without decoding them, so they are still what the header describes; a `req.body`
 * comes from a parser (express.json(), raw(), text() inflate gzip / deflate / br) or from the
 * gateway's code, so it is decoded, and re-sent with the header it would be mislabelled.
 */
function outgoingBody(req: Request, headers: RelayHeaders): OutBody {
  const out = bodyToSend(req, headers);
  if (out.verbatim) {
    const ce = req.headers['content-encoding'];
    if (ce !== undefined) headers['content-encoding'] = ce;
  }
  return out;
}

/** True for a body whose bytes are JSON as they are (no content-encoding other than identity). */
function plainJson(req: Request): boolean {
  if (bodyKind(req.headers['content-type']) !== 'json') return false;
  const ce = req.headers['content-encoding'];
  return ce === undefined || ce.trim().toLowerCase() === 'identity';
}

function bodyToSend(req: Request, headers: RelayHeaders): OutBody {
  const raw = req.rawBody;
  const body: unknown = req.body;
  if (raw && (body === undefined || parsedFromRaw.get(raw) === body)) {
    return plainJson(req) ? { data: raw, verbatim: true, remap: { bytes: raw } } : { data: raw, verbatim: true };
  }
  if (body !== undefined && body !== null) {
    if (Buffer.isBuffer(body)) return bodyKind(req.headers['content-type']) === 'json' ? { data: body, remap: { bytes: body } } : { data: body };
    if (typeof body === 'string') return bodyKind(req.headers['content-type']) === 'json' ? { data: body, remap: { bytes: Buffer.from(body) } } : { data: body };
    if (typeof body === 'object') {
      if (!hasBody(req) && Object.keys(body).length === 0) return {};
      if (bodyKind(req.headers['content-type']) === 'form') {
        return { data: new URLSearchParams(body as Record<string, string>).toString() };
      }
      if (bodyKind(req.headers['content-type']) !== 'json') headers['content-type'] = 'application/json';
      return { data: JSON.stringify(body), remap: Array.isArray(body) ? undefined : { object: body as Record<string, unknown> } };
    }
  }
  if (hasBody(req) && !req.readableEnded && (req as { _body?: boolean })._body !== true) {
    const cl = req.headers['content-length'];
    if (cl !== undefined) headers['content-length'] = cl;
    return { stream: req, verbatim: true };
  }
  return {};
}

/**
 * The body for an attempt on `channel`: the request's, or (when the channel maps the requested
 * model and the body is JSON naming it at the top level) a copy with the mapped name as `model`.
 * Only the bytes of that value change; an unmapped request keeps its exact bytes.
 */
function bodyFor(out: OutBody, channel: Channel, requested: string): OutBody {
  const remap = out.remap;
  if (!remap) return out;
  const mapped = mappedModel(channel, requested);
  if (mapped === undefined) return out;
  const hit = out.mapped?.get(mapped);
  if (hit) return hit;
  let result: OutBody = out;
  if ('bytes' in remap) {
    const b = mapJsonModel(remap.bytes, requested, mapped);
    if (b) result = { data: b };
  } else if (remap.object.model === requested) {
    result = { data: JSON.stringify({ ...remap.object, model: mapped }) };
  }
  (out.mapped ??= new Map()).set(mapped, result);
  return result;
}

function errorCode(e: unknown): string | undefined {
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === 'string' ? c : undefined;
}

/** A connection-level failure, described without addresses or URLs. */
function networkFailure(e: unknown): Failure {
  const code = errorCode(e);
  switch (code) {
    case 'UND_ERR_HEADERS_TIMEOUT':
      return { code: 'upstream_timeout', message: 'Upstream timed out before sending response headers', committed: false };
    case 'UND_ERR_BODY_TIMEOUT':
      return { code: 'upstream_timeout', message: 'Upstream timed out while sending the response body', committed: false };
    case 'UND_ERR_CONNECT_TIMEOUT':
      return { code: 'upstream_timeout', message: 'Upstream connect timed out', committed: false };
    case 'ECONNREFUSED':
      return { code: 'upstream_connection_error', message: 'Upstream refused the connection', committed: false };
    case 'ECONNRESET':
    case 'UND_ERR_SOCKET':
    case 'EPIPE':
      return { code: 'upstream_connection_error', message: 'Upstream closed the connection', committed: false };
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return { code: 'upstream_connection_error', message: 'Upstream host could not be resolved', committed: false };
    default:
      return { code: 'upstream_connection_error', message: `Upstream request failed${code ? ` (${code.replace(/[^A-Z0-9_]/gi, '')})` : ''}`, committed: false };
  }
}

/** The message inside an upstream error body (OpenAI `error.message`, or common variants). */
function upstreamMessage(text: string, status: number): string {
  const t = text.trim();
  if (t.startsWith('{')) {
    try {
      const j = JSON.parse(t) as { error?: unknown; message?: unknown; detail?: unknown };
      const e = j.error;
      if (e && typeof e === 'object' && typeof (e as { message?: unknown }).message === 'string') return (e as { message: string }).message;
      if (typeof e === 'string') return e;
      if (typeof j.message === 'string') return j.message;
      if (typeof j.detail === 'string') return j.detail;
    } catch {
      /* not JSON: use the text */
    }
  }
  return t ? t.slice(0, 500) : `Upstream answered with status ${status}`;
}

/** The client's error body for a final upstream status: the upstream's if OpenAI-shaped, else wrapped. */
function clientErrorBody(f: Failure, status: number): string {
  const t = f.body?.trim() ?? '';
  if (t.startsWith('{')) {
    try {
      const j = JSON.parse(t) as { error?: unknown };
      if (j.error && typeof j.error === 'object' && !Array.isArray(j.error)) return t;
    } catch {
      /* wrapped below */
    }
  }
  return relayErrorBody(f.message, `upstream_${status}`);
}

/** Reads at most `limit` bytes of an error body; the rest is discarded with the connection. */
function readBounded(body: Readable, limit: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const done = () => {
      body.off('data', onData);
      body.off('end', done);
      body.off('error', done);
      resolve(Buffer.concat(chunks, Math.min(size, limit)).toString('utf8'));
    };
    const onData = (c: Buffer) => {
      chunks.push(c);
      size += c.length;
      if (size >= limit) {
        done();
        body.destroy();
      }
    };
    body.on('data', onData);
    body.once('end', done);
    body.once('error', done);
  });
}

/** Index just past the last complete SSE event (after a blank line), or 0. */
function sseBoundary(buf: Buffer): number {
  for (let i = buf.length - 1; i > 0; i--) {
    if (buf[i] !== 0x0a) continue;
    const p = buf[i - 1];
    if (p === 0x0a || (p === 0x0d && i > 1 && buf[i - 2] === 0x0a)) return i + 1;
  }
  return 0;
}

/**
 * What reads the usage of an answer as it passes: an SSE scanner, a capped JSON copy, or nothing
 * (usage off, not 2xx, an encoded body, another content type, a JSON body known to be too large).
 */
function usageReader(o: Resolved, up: Dispatcher.ResponseData, sse: boolean): SseUsageScanner | JsonUsageCollector | undefined {
  if (!o.reportUsage || up.statusCode < 200 || up.statusCode >= 300) return undefined;
  const ce = up.headers['content-encoding'];
  if (ce !== undefined && !(typeof ce === 'string' && ce.trim().toLowerCase() === 'identity')) return undefined;
  if (sse) return new SseUsageScanner();
  if (!isJsonContentType(up.headers['content-type'])) return undefined;
  const cl = up.headers['content-length'];
  if (typeof cl === 'string' && Number(cl) > JSON_USAGE_BODY_LIMIT) return undefined;
  return new JsonUsageCollector();
}

/** `distribution.reportUsage()` once per request; a throwing report never breaks the response. */
function reportAnswerUsage(res: Response, st: RunState, usage: UsageReport | undefined): void {
  if (!usage || st.usageReported) return;
  st.usageReported = true;
  const d = res.locals.distribution as Distribution | undefined;
  if (typeof d?.reportUsage !== 'function') return;
  try {
    d.reportUsage(usage);
  } catch {
    /* accounting never breaks a response */
  }
}

/** `distribution.reportLatency()` for the answer that served; a throwing report never breaks the response. */
function reportLatency(res: Response, ms: number, firstByte: boolean): void {
  const d = res.locals.distribution as Distribution | undefined;
  if (typeof d?.reportLatency !== 'function') return;
  try {
    d.reportLatency(ms, { firstByte });
  } catch {
    /* accounting never breaks a response */
  }
}

function reportUpstreamError(o: Resolved, e: RelayUpstreamError): void {
  if (!o.onUpstreamError) return;
  try {
    o.onUpstreamError(e);
  } catch {
    /* an observer never breaks a request */
  }
}

/**
 * Streams a 2xx/3xx upstream answer to the client. Resolves null when the response was sent (or
 * ended visibly after the commit point), or a Failure when the upstream failed before any byte
 * reached the client (the caller may retry).
 */
function pump(up: Dispatcher.ResponseData, res: Response, st: RunState, o: Resolved, req: Request, channel: Channel, attempt: number, started: number): Promise<Failure | null> {
  return new Promise((resolve) => {
    const body = up.body;
    const ct = up.headers['content-type'];
    const sse = typeof ct === 'string' && ct.toLowerCase().startsWith('text/event-stream');
    // lowest-latency learns time to first byte for a stream, total time otherwise
    let timed = false;
    const latency = (firstByte: boolean) => {
      if (timed) return;
      timed = true;
      reportLatency(res, performance.now() - started, firstByte);
    };
    let committed = false;
    let held: Buffer | undefined;
    const usage = usageReader(o, up, sse);
    const commit = () => {
      committed = true;
      let headers = forwardResponseHeaders(up.headers, channel.key);
      if (o.responseHeaders) headers = o.responseHeaders(headers, { req, channel, status: up.statusCode }) ?? headers;
      res.writeHead(up.statusCode, headers);
    };
    const write = (chunk: Buffer) => {
      // the client went between two chunks: stop reading the upstream (its 'close' aborts it too)
      if (st.clientGone || res.destroyed) {
        abandon();
        return;
      }
      if (!committed) commit();
      if (!res.write(chunk)) {
        body.pause();
        res.once('drain', () => body.resume());
      }
    };
    const onData = (chunk: Buffer) => {
      if (sse && !timed) latency(true);
      usage?.push(chunk);
      try {
        if (!sse) {
          write(chunk);
          return;
        }
        // SSE: only whole events reach the client, so an error event never lands inside one
        const buf = held ? Buffer.concat([held, chunk]) : chunk;
        const cut = buf.length > SSE_HOLD_LIMIT ? buf.length : sseBoundary(buf);
        held = cut < buf.length ? buf.subarray(cut) : undefined;
        if (cut > 0) write(cut === buf.length ? buf : buf.subarray(0, cut));
      } catch {
        abandon();
      }
    };
    // a throwing responseHeaders hook, or a response taken over elsewhere: give up visibly
    const abandon = () => {
      cleanup();
      body.on('error', () => {});
      body.destroy();
      res.destroy();
      resolve(null);
    };
    const cleanup = () => {
      body.off('data', onData);
      body.off('end', onEnd);
      body.off('error', onError);
    };
    const onEnd = () => {
      try {
        if (!committed) commit();
      } catch {
        abandon();
        return;
      }
      cleanup();
      latency(sse);
      // before the last byte goes out: a client that read the answer sees it accounted
      if (usage) reportAnswerUsage(res, st, usage.result());
      if (held) res.end(held);
      else res.end();
      resolve(null);
    };
    const onError = (err: unknown) => {
      cleanup();
      body.on('error', () => {}); // late errors after destroy are not interesting
      if (st.clientGone) {
        resolve(null);
        return;
      }
      const f = networkFailure(err);
      if (!committed) {
        resolve({ ...f, message: f.code === 'upstream_timeout' ? f.message : 'Upstream closed the stream before sending data' });
        return;
      }
      const message = f.code === 'upstream_timeout' ? `${f.message}; the response is incomplete` : 'Upstream stream was interrupted; the response is incomplete';
      reportUpstreamError(o, { req, channelId: channel.id, attempt, code: 'stream_interrupted', message, committed: true });
      // The wire status is already sent: report the failure to the distributor (health, pin
      // clearing; no retry after the commit point) and mark it for access logs.
      void (res.locals.distribution as Distribution | undefined)?.fail({ error: message });
      res.statusCode = 502;
      if (sse && up.headers['content-length'] === undefined && res.writable && !res.destroyed) {
        res.end(`event: error\ndata: ${relayErrorBody(message, 'stream_interrupted')}\n\n`);
      } else {
        res.destroy();
      }
      resolve(null);
    };
    body.on('data', onData);
    body.once('end', onEnd);
    body.once('error', onError);
  });
}

const INVALID_PATH = 'Invalid request path: dot segments, a leading "//" and absolute-form request targets are not forwarded';

/**
 * The upstream path and query for this attempt, or undefined when the path rule refuses it. The
 * default rule has checked `req.originalUrl` already (refusedTarget, once per request); a custom
 * `path` result is checked here. Either way the result starts with the base path, and the
 * caller's `key` query parameter is removed when the channel has a key.
 */
function targetPath(req: Request, o: Resolved, base: UpstreamBase, channel: Channel, requested: string): string | undefined {
  let path: string;
  if (o.path) {
    const p = o.path(req, channel);
    path = base.basePath + (p.charCodeAt(0) === 0x2f ? p : `/${p}`);
    if (unsafePath(path)) return undefined;
  } else {
    const incoming = req.originalUrl ?? req.url;
    const mapped = channel.modelMapping ? mappedModel(channel, requested) : undefined;
    if (channel.type === 'azure') {
      // the (mapped) model names the deployment: checked like any path (a model `..` is refused)
      path = azurePath(base.basePath, incoming, mapped ?? requested, channel.apiVersion, Boolean(channel.key));
      return unsafePath(path) ? undefined : path;
    }
    const src = mapped === undefined ? incoming : mapGeminiPath(incoming, requested, mapped);
    path = upstreamPath(base, src);
    if (src !== incoming && unsafePath(path)) return undefined;
  }
  return channel.key ? withoutKeyParam(path) : path;
}

/** Values of the caller's `key` query parameter (a Gemini-style credential), for redaction. */
/** An attempt whose upstream answered with headers. */
interface Opened {
  up: Dispatcher.ResponseData;
  /** performance.now() when the attempt started (its latency). */
  started: number;
}

function isOpened(v: Opened | Failure | null): v is Opened {
  return v !== null && 'up' in v;
}

/** One upstream attempt. Null when the client got its answer (or has gone); a Failure otherwise. */
async function attemptOnce(req: Request, res: Response, o: Resolved, st: RunState, channel: Channel, baseHeaders: RelayHeaders, out: OutBody, attempt: number): Promise<Failure | null> {
  const opened = await openAttempt(req, res, o, st, channel, baseHeaders, out, attempt, st.signal);
  return isOpened(opened) ? answer(req, res, o, st, channel, opened, attempt) : opened;
}

/** Sends one attempt and waits for its response headers: the answer, a Failure, or null (the client has gone). */
async function openAttempt(
  req: Request, res: Response, o: Resolved, st: RunState, channel: Channel, baseHeaders: RelayHeaders, out: OutBody, attempt: number, signal: EventEmitter,
): Promise<Opened | Failure | null> {
  const base = upstreamBase(channel);
  if (typeof base === 'string') return { code: 'upstream_connection_error', message: base, committed: false };
  let headers = channelHeaders(baseHeaders, channel, st.callerCredentials);
  if (o.headers) {
    headers = { ...headers };
    headers = o.headers(headers, { req, channel, attempt }) ?? headers;
  }
  const path = targetPath(req, o, base, channel, st.requested);
  const body = bodyFor(out, channel, st.requested);
  if (path === undefined) return { refused: true, status: 400, code: 'invalid_path', message: INVALID_PATH, committed: false };
  // the client may have gone while retry() waited, or before relay() started
  if (st.clientGone || res.closed) return null;
  const started = performance.now();
  let up: Dispatcher.ResponseData;
  try {
    up = await o.dispatcher.request({
      origin: base.origin,
      path,
      method: req.method as Dispatcher.HttpMethod,
      headers,
      body: body.stream ?? body.data ?? null,
      signal,
      headersTimeout: o.timeoutMs,
      bodyTimeout: o.bodyTimeoutMs,
    });
  } catch (e) {
    return networkFailure(e);
  }
  if (st.clientGone) {
    up.body.destroy();
    return null;
  }
  return { up, started };
}

/** An answer with headers: an error answer becomes a Failure (its body read, scrubbed); anything else is streamed to the client. */
async function answer(req: Request, res: Response, o: Resolved, st: RunState, channel: Channel, opened: Opened, attempt: number): Promise<Failure | null> {
  const { up } = opened;
  if (up.statusCode >= 400) {
    // the caller's credentials (headers, `?key=`) and affinity values, which an upstream may echo
    st.secrets ??= requestSecrets(res.locals.distribution);
    const keys = channel.key ? [channel.key, encodeURIComponent(channel.key)] : [];
    const text = redact(await readBounded(up.body, o.errorBodyLimit), keys, st.secrets);
    const ra = up.headers['retry-after'];
    return {
      status: up.statusCode,
      code: 'upstream_status',
      message: upstreamMessage(text, up.statusCode),
      retryAfterMs: parseRetryAfter(up.headers),
      body: text,
      retryAfter: typeof ra === 'string' ? withoutKey(ra, channel.key) : undefined,
      committed: false,
    };
  }
  return pump(up, res, st, o, req, channel, attempt, opened.started);
}

/** A hedge racer's answer that is a failure of its channel (no answer, 429, 5xx): the other races on. */
function racerFailed(v: Opened | Failure): boolean {
  if (!isOpened(v)) return !v.refused;
  const s = v.up.statusCode;
  return s === 429 || s >= 500;
}

function racerFailure(v: Opened | Failure): { status?: number; error?: unknown; retryAfterMs?: number } {
  if (isOpened(v)) return { status: v.up.statusCode, error: `upstream answered ${v.up.statusCode}`, retryAfterMs: parseRetryAfter(v.up.headers) };
  return { status: v.status, error: v.message, retryAfterMs: v.retryAfterMs };
}

/** Drops an answer nobody will read (the loser of a hedge race). */
function discard(v: Opened | Failure | null): void {
  if (isOpened(v)) {
    v.up.body.on('error', () => {});
    v.up.body.destroy();
  }
}

/** An abort signal for one racer: fires when the client goes, or when the racer loses. */
function racerSignal(st: RunState): { signal: EventEmitter; abort: () => void; done: () => void } {
  const signal = new EventEmitter();
  const forward = () => signal.emit('abort');
  st.signal.once('abort', forward);
  return { signal, abort: forward, done: () => st.signal.off('abort', forward) };
}

/**
 * One attempt with a hedge (`relay({ hedge })`): the attempt on `channel`, and, when it has no
 * headers after `afterMs`, a second on the channel `hedge.start()` gives. The first usable answer
 * wins and is streamed to the client; the other is aborted (neither success nor failure). A
 * racer that fails (no answer, 429, 5xx) is recorded as that channel's failure, and the other
 * continues alone. Resolves to the outcome and the channel it ended on.
 */
async function hedgedAttempt(
  req: Request, res: Response, o: Resolved, st: RunState, channel: Channel, baseHeaders: RelayHeaders, out: OutBody, attempt: number, control: HedgeControl,
): Promise<{ f: Failure | null; channel: Channel; hedged: boolean }> {
  const a = racerSignal(st);
  const pa = openAttempt(req, res, o, st, channel, baseHeaders, out, attempt, a.signal);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), o.hedgeAfterMs);
  });
  const first = await Promise.race([pa, late]);
  clearTimeout(timer);
  const alone = async (p: Promise<Opened | Failure | null>, ch: Channel, sig: { done: () => void }, hedged: boolean) => {
    const v = await p;
    sig.done();
    return { f: isOpened(v) ? await answer(req, res, o, st, ch, v, attempt) : v, channel: ch, hedged };
  };
  if (first !== 'late' || st.clientGone) return alone(pa, channel, a, false);
  const other = await control.start();
  if (!other || st.clientGone) return alone(pa, channel, a, false);
  const b = racerSignal(st);
  // its own copy of the headers: channelHeaders() sets an OpenAI key in place, and the first
  // attempt's request must never see the hedge channel's key
  const pb = openAttempt(req, res, o, st, other, { ...baseHeaders }, out, attempt + 1, b.signal);
  const racers = [
    { p: pa, ch: channel, sig: a, side: 'primary' as const },
    { p: pb, ch: other, sig: b, side: 'hedge' as const },
  ];
  const won = await Promise.race(racers.map((r, i) => r.p.then((v) => ({ i, v }))));
  const w = racers[won.i];
  const l = racers[1 - won.i];
  if (won.v === null) {
    // the client went: both stop
    l.sig.abort();
    void l.p.then(discard);
    a.done();
    b.done();
    return { f: null, channel: w.ch, hedged: true };
  }
  if (racerFailed(won.v)) {
    // this racer failed first: recorded as its channel's failure; the other races on alone
    discard(won.v);
    w.sig.done();
    await control.settle(l.side, racerFailure(won.v));
    return alone(l.p, l.ch, l.sig, true);
  }
  // the winner: the other is aborted and counts neither way
  l.sig.abort();
  void l.p.then(discard);
  l.sig.done();
  w.sig.done();
  await control.settle(w.side);
  // (a Failure here is the path rule's refusal: no upstream call was made, so it ends the request)
  return { f: isOpened(won.v) ? await answer(req, res, o, st, w.ch, won.v, attempt) : won.v, channel: w.ch, hedged: true };
}

/** 400 `invalid_path` (OpenAI-shaped): the path rule refused the request before any upstream call. */
function sendInvalidPath(res: Response): void {
  const text = JSON.stringify({ error: { message: INVALID_PATH, type: 'invalid_request_error', code: 'invalid_path' } });
  res.statusCode = 400;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.setHeader('content-length', Buffer.byteLength(text));
  res.end(text);
}

/** The final answer after the last failed attempt. */
function sendFailure(res: Response, f: Failure): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  let status: number;
  let text: string;
  if (f.status !== undefined) {
    status = f.status;
    text = clientErrorBody(f, f.status);
    if (f.retryAfter) res.setHeader('retry-after', f.retryAfter);
  } else {
    status = f.code === 'upstream_timeout' ? 504 : 502;
    text = relayErrorBody(f.message, f.code);
  }
  res.statusCode = status;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.setHeader('content-length', Buffer.byteLength(text));
  res.end(text);
}

async function relayRequest(req: Request, res: Response, o: Resolved): Promise<void> {
  const dist: Distribution | undefined = res.locals.distribution;
  let channel: Channel | undefined = res.locals.channel;
  if (!channel || !dist || !dist.selected) {
    res.statusCode = 500;
    res.setHeader('content-type', 'application/json; charset=utf-8');
    res.end(JSON.stringify({ error: { message: 'relay(): no channel was selected for this request (mount distributor() before relay())', type: 'relay_error', code: 'no_channel' } }));
    return;
  }
  // The client may have gone while the distributor was still awaiting (body, store, context):
  // its 'close' has fired already, so no listener registered now would hear it. `res.closed` is
  // the condition `distribution.signal` reports (closed before the response finished); it is read
  // here instead of the signal, which the distributor creates on first use (an AbortController
  // costs ~4 us per request on Node 20). attemptOnce() checks it again before every upstream call.
  if (res.closed) return;
  if (!o.path && refusedTarget(req.originalUrl ?? req.url)) {
    sendInvalidPath(res);
    return;
  }
  const st: RunState = { clientGone: false, signal: new EventEmitter(), requested: typeof dist.model === 'string' ? dist.model : '' };
  // One listener per request, on the response (an EventEmitter, cheap): when the client goes
  // before the response finished, the attempt in flight is aborted: undici rejects a pending
  // request and destroys a response body, also one paused while waiting for 'drain'.
  const onClose = () => {
    if (!res.writableFinished) {
      st.clientGone = true;
      st.signal.emit('abort');
    }
  };
  res.once('close', onClose);
  const baseHeaders = forwardRequestHeaders(req.headers, o.allow);
  // the caller's own credentials (only there when named in forwardHeaders) never go with a channel key
  st.callerCredentials = takeCallerCredentials(baseHeaders);
  const out = outgoingBody(req, baseHeaders);
  // one hedge per request, when the body can be sent twice
  let hedge = o.hedgeAfterMs !== undefined && !out.stream ? hedgeControl(dist) : undefined;
  for (let attempt = 1; ; attempt++) {
    let f: Failure | null;
    if (hedge) {
      const r = await hedgedAttempt(req, res, o, st, channel, baseHeaders, out, attempt, hedge);
      f = r.f;
      channel = r.channel;
      if (r.hedged) {
        hedge = undefined;
        attempt++;
      }
    } else f = await attemptOnce(req, res, o, st, channel, baseHeaders, out, attempt);
    if (f?.refused) {
      if (!res.headersSent && !st.clientGone) sendInvalidPath(res);
      return;
    }
    if (!f || f.committed || st.clientGone) return;
    reportUpstreamError(o, { req, channelId: channel.id, attempt, status: f.status, code: f.code, message: f.message, retryAfterMs: f.retryAfterMs, committed: false });
    // A streamed request body was consumed by the first attempt and cannot be replayed.
    const next: Channel | null = out.stream ? null : await dist.retry({ status: f.status, error: f.message, retryAfterMs: f.retryAfterMs });
    if (st.clientGone) return;
    if (!next) {
      sendFailure(res, f);
      return;
    }
    channel = next;
  }
}

/**
 * Creates the relay handler. Mount it after `distributor()` on the routes it should forward:
 *
 * @example
 * const forward = relay({ timeoutMs: 60_000 });
 * app.use('/v1', auth, distributor({ channels }));
 * app.post(['/v1/chat/completions', '/v1/responses'], forward);
 */
/** relay()'s option errors: TypeErrors naming relay(). */
const refuse = (message: string) => new TypeError(`relay(): ${message}`);

function hedgeOption(h: RelayOptions['hedge']): number | undefined {
  if (h === undefined) return undefined;
  if (!h || typeof h !== 'object') throw refuse('hedge must be { afterMs: number }');
  return positiveNumber(refuse, 'hedge.afterMs', h.afterMs, NaN);
}

export function relay(options: RelayOptions = {}): RelayHandler {
  const timeoutMs = positiveNumber(refuse, 'timeoutMs', options.timeoutMs, 120_000);
  const bodyTimeoutMs = positiveNumber(refuse, 'bodyTimeoutMs', options.bodyTimeoutMs, 120_000);
  const errorBodyLimit = positiveNumber(refuse, 'errorBodyLimit', options.errorBodyLimit, 65_536);
  const connectTimeoutMs = positiveNumber(refuse, 'connectTimeoutMs', options.connectTimeoutMs, 10_000);
  const allow = compileForwardHeaders(options.forwardHeaders);
  // keep-alive pool per origin; idle sockets live 30 s unless the upstream's Keep-Alive says less
  const ownAgent = options.dispatcher ? undefined : new Agent({ keepAliveTimeout: 30_000, keepAliveMaxTimeout: 600_000, connect: { timeout: connectTimeoutMs } });
  const o: Resolved = {
    timeoutMs,
    bodyTimeoutMs,
    errorBodyLimit,
    path: options.path,
    headers: options.headers,
    responseHeaders: options.responseHeaders,
    allow,
    dispatcher: options.dispatcher ?? (ownAgent as Agent),
    onUpstreamError: options.onUpstreamError,
    reportUsage: options.reportUsage !== false,
    hedgeAfterMs: hedgeOption(options.hedge),
  };
  const handler = function relayMiddleware(req: Request, res: Response, next: NextFunction): void {
    relayRequest(req, res, o).catch((err: unknown) => {
      if (res.headersSent) res.destroy();
      else next(err);
    });
  } as RelayHandler;
  Object.defineProperties(handler, {
    dispatcher: { value: o.dispatcher, enumerable: true },
    close: { value: async () => ownAgent?.close() },
  });
  return handler;
}
