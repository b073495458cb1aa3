// Shared pieces of the reliability suites (docs/reliability.md): planted secrets and the leak check, a raw
// HTTP sender that writes exactly the bytes a case asks for, the OpenAI error-shape check, and a
// prototype snapshot for the pollution checks.
import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Channel, Distribution, RequestContext } from '../../lib';
import { runtimeOf, type DistributorHandler } from '../../lib/distributor';

// ---- planted secrets ------------------------------------------------------------------------
// None of them starts with `sk-`, so the generic `sk-...` log redaction cannot hide a leak: only
// the distributor's own redaction (channel keys, the caller's credentials, affinity values) can.

/** Channel keys configured in the suites. */
export const CHANNEL_KEYS = [
  'AIzaRELIABILITY-channel-key-0001',
  'AIzaRELIABILITY-channel-key-0002',
  'AIzaRELIABILITY-channel-key-0003',
  'AIzaRELIABILITY-channel-key-0004',
  'AIzaRELIABILITY-channel-key-0005',
] as const;

/** Callers' bearer tokens (what `Authorization: Bearer ...` carries). */
export const TOKEN_A = 'tenant-a-secret-token-7f3c9d';
export const TOKEN_B = 'tenant-b-secret-token-2e8a41';
/** A token whose context pins a disabled channel, and one that pins an unknown channel. */
export const TOKEN_PIN_DISABLED = 'tenant-c-secret-token-5b1d77';
export const TOKEN_PIN_UNKNOWN = 'tenant-d-secret-token-9c0e12';
/** Another credential header a caller may send (Anthropic / Azure style). */
export const X_API_KEY = 'caller-x-api-key-secret-44d1aa';
/** Affinity values planted in bodies and headers (raw values must never be shown or stored). */
export const SESSION_SECRET = 'session-value-SECRET-0b7e5c1a';
export const CLAUDE_SESSION_SECRET = 'claude-session-SECRET-77aa01ff';
export const NESTED_SESSION_SECRET = 'nested-session-SECRET-3c3c3c3c';

export const ALL_SECRETS: readonly string[] = [
  ...CHANNEL_KEYS, TOKEN_A, TOKEN_B, TOKEN_PIN_DISABLED, TOKEN_PIN_UNKNOWN, X_API_KEY,
  SESSION_SECRET, CLAUDE_SESSION_SECRET, NESTED_SESSION_SECRET,
];

/** The planted secrets found in `text` (an empty list is a pass). */
export function leakedSecrets(text: string, secrets: readonly string[] = ALL_SECRETS): string[] {
  return secrets.filter((s) => text.includes(s));
}

// ---- OpenAI error shape ---------------------------------------------------------------------

export interface OpenAIError {
  error: { message: string; type: string; code: string };
}

/** Is `text` an OpenAI-shaped error body (`{ error: { message, type, code } }`)? */
export function openAiError(text: string): OpenAIError | undefined {
  try {
    const j = JSON.parse(text) as unknown;
    if (!j || typeof j !== 'object') return undefined;
    const e = (j as { error?: unknown }).error;
    if (!e || typeof e !== 'object') return undefined;
    const { message, type, code } = e as Record<string, unknown>;
    if (typeof message !== 'string' || typeof type !== 'string' || typeof code !== 'string') return undefined;
    return j as OpenAIError;
  } catch {
    return undefined;
  }
}

// ---- raw HTTP -------------------------------------------------------------------------------

export interface RawRequest {
  method: string;
  /** Written as is on the request line (latin1: `\u00ff` is the byte 0xff). */
  path: string;
  /** Header values are written as latin1 bytes; a name given twice is sent twice. */
  headers: Array<[string, string]>;
  body?: Buffer;
  /** Send the body with `Transfer-Encoding: chunked` (in 16 KiB chunks) instead of Content-Length. */
  chunked?: boolean;
}

export interface RawReply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  /** Set when the exchange failed at the socket level (the server reset or closed the connection). */
  error?: string;
  ms: number;
}

/** Sends one request with node:http (no client-side normalisation beyond what the wire needs). */
export function sendRaw(baseUrl: string, r: RawRequest, agent?: http.Agent): Promise<RawReply> {
  const u = new URL(baseUrl);
  const start = Date.now();
  return new Promise((resolve) => {
    const grouped = new Map<string, string[]>();
    for (const [k, v] of r.headers) grouped.set(k, [...(grouped.get(k) ?? []), v]);
    const headers: http.OutgoingHttpHeaders = {};
    for (const [k, vs] of grouped) headers[k] = vs.length === 1 ? vs[0] : vs;
    const hasLength = [...grouped.keys()].some((k) => k.toLowerCase() === 'content-length');
    if (r.chunked) headers['transfer-encoding'] = 'chunked';
    else if (!hasLength) headers['content-length'] = String(r.body?.length ?? 0);
    let req: http.ClientRequest;
    try {
      req = http.request({ host: u.hostname, port: u.port, method: r.method, path: r.path, headers, agent: agent ?? false });
    } catch (e) {
      resolve({ status: 0, headers: {}, text: '', error: `client refused to send: ${(e as Error).message}`, ms: 0 });
      return;
    }
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8'), ms: Date.now() - start }));
      res.on('error', (e) => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8'), error: e.message, ms: Date.now() - start }));
    });
    // The server may answer (413, 431) and close before the whole body was written.
    req.on('error', (e) => resolve({ status: 0, headers: {}, text: '', error: (e as NodeJS.ErrnoException).code ?? e.message, ms: Date.now() - start }));
    const body = r.body ?? Buffer.alloc(0);
    if (r.chunked) {
      for (let i = 0; i < body.length; i += 16384) req.write(body.subarray(i, i + 16384));
      req.end();
    } else {
      req.end(body);
    }
  });
}

/** Listens on a free loopback port. */
export function listen(app: http.RequestListener): Promise<{ url: string; server: http.Server; close(): Promise<void> }> {
  return new Promise((resolve) => {
    const server = http.createServer(app);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${port}`,
        server,
        close: () => new Promise<void>((r) => {
          server.close(() => r());
          server.closeAllConnections();
        }),
      });
    });
  });
}

// ---- prototype pollution --------------------------------------------------------------------

const PROTOS: Array<[string, object]> = [
  ['Object.prototype', Object.prototype],
  ['Array.prototype', Array.prototype],
  ['Function.prototype', Function.prototype],
  ['String.prototype', String.prototype],
  ['Number.prototype', Number.prototype],
  ['Boolean.prototype', Boolean.prototype],
];

/** The own property names of the built-in prototypes, to compare before and after a run. */
export function prototypeSnapshot(): Record<string, string[]> {
  return Object.fromEntries(PROTOS.map(([name, p]) => [name, Reflect.ownKeys(p).map(String).sort()]));
}

/** Properties a polluting payload would have added, read through a fresh object. */
export function pollutionProbe(): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  return { polluted: o.polluted, isAdmin: o.isAdmin, model: o.model, session_id: o.session_id, user_id: o.user_id };
}

// ---- distributor internals ------------------------------------------------------------------

/** Requests in flight / retrying on a distributor (both must return to 0 after every run). */
export function counters(mw: DistributorHandler): { active: number; retrying: number } {
  const rt = runtimeOf(mw);
  if (!rt) throw new Error('not a distributor handler');
  return { ...rt.counters };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Percentile of a list of numbers (nearest rank). */
export function percentile(values: number[], p: number): number {
  if (values.length === 0) return 0;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

// ---- in-process invocation (no sockets: for properties that need thousands of requests) ------

export interface FakeRes extends EventEmitter {
  locals: Record<string, unknown> & { channel?: Channel; distribution?: Distribution };
  statusCode: number;
  headersSent: boolean;
  writableFinished: boolean;
  body?: unknown;
  headers: Record<string, unknown>;
  setHeader(name: string, value: unknown): FakeRes;
  getHeader(name: string): unknown;
  status(code: number): FakeRes;
  json(body: unknown): FakeRes;
  /** Ends the response with `status` (the distributor's finish watcher records pins and health). */
  finish(status: number): void;
}

export interface Invocation {
  /** True when the distributor called next() (a channel was chosen), false when it answered. */
  next: boolean;
  req: EventEmitter & { headers: Record<string, string>; body: unknown };
  res: FakeRes;
}

/**
 * Runs the middleware on an in-memory request whose body is already parsed (as after
 * express.json()), resolving when it calls next() or answers.
 */
export function invoke(mw: DistributorHandler, opts: { path?: string; headers?: Record<string, string>; body?: Record<string, unknown>; ctx?: RequestContext }): Promise<Invocation> {
  const path = opts.path ?? '/v1/chat/completions';
  const req = Object.assign(new EventEmitter(), {
    method: 'POST', url: path, originalUrl: path, headers: { 'content-type': 'application/json', ...opts.headers },
    body: opts.body ?? {}, _body: true, readableEnded: true, query: {},
  });
  const res = Object.assign(new EventEmitter(), {
    locals: { token: opts.ctx ?? {} } as FakeRes['locals'],
    statusCode: 200,
    headersSent: false,
    writableFinished: false,
    headers: {} as Record<string, unknown>,
    setHeader(this: FakeRes, name: string, value: unknown) { this.headers[name.toLowerCase()] = value; return this; },
    getHeader(this: FakeRes, name: string) { return this.headers[name.toLowerCase()]; },
    status(this: FakeRes, code: number) { this.statusCode = code; return this; },
    json(this: FakeRes, body: unknown) { this.body = body; this.finish(this.statusCode); return this; },
    finish(this: FakeRes, status: number) {
      if (this.writableFinished) return;
      this.statusCode = status;
      this.headersSent = true;
      this.writableFinished = true;
      this.emit('finish');
      this.emit('close');
    },
  }) as FakeRes;
  (req as unknown as { res: FakeRes }).res = res;
  return new Promise((resolve, reject) => {
    res.once('finish', () => resolve({ next: false, req, res }));
    mw(req as never, res as never, (err?: unknown) => (err ? reject(err) : resolve({ next: true, req, res })));
  });
}

/** A small seeded PRNG (mulberry32) in [0, 1). */
export function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Upper quantile of the chi-square distribution (Wilson–Hilferty), e.g. z = 4.7534 for p = 1e-6. */
export function chiSquareCritical(df: number, z = 4.7534): number {
  const a = 2 / (9 * df);
  return df * Math.pow(1 - a + z * Math.sqrt(a), 3);
}

/** Pearson's chi-square statistic of observed counts against expected probabilities. */
export function chiSquare(observed: number[], probabilities: number[]): number {
  const n = observed.reduce((s, x) => s + x, 0);
  return observed.reduce((s, o, i) => s + ((o - n * probabilities[i]) ** 2) / (n * probabilities[i]), 0);
}
