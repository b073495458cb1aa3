// A built-in mock upstream (one "channel"), started in-process on a free loopback port, speaking
// one provider protocol (`protocol`: OpenAI by default, Azure OpenAI, Anthropic or Gemini; see
// ./mock-protocols.ts). Plain node:http, no network beyond 127.0.0.1. Used by the example gateway and by
// the relay tests; it can also run alone:
//
//   PORT=18001 MOCK_NAME=ch1 [MOCK_PROTOCOL=anthropic] npx tsx examples/gateway/mock-upstream.ts
//
// Endpoints (protocol "openai"; the others below):
//   POST /v1/chat/completions   chat.completion JSON, or SSE chunks ending in `data: [DONE]` with "stream": true
//                               (a last chunk with `usage` when "stream_options": { "include_usage": true })
//   POST /v1/responses          a Responses API object, or its SSE events with "stream": true
//                               (`response.completed` carries the usage)
//   POST /v1/embeddings         an embeddings list (base64 float32 with "encoding_format": "base64", as the OpenAI SDK asks)
//   protocol "azure":     POST /openai/deployments/{deployment}/chat/completions | responses | embeddings?api-version=...
//   protocol "anthropic": POST /v1/messages (a Message, or its SSE events with "stream": true; needs anthropic-version)
//   protocol "gemini":    POST /v1beta/models/{model}:generateContent | :streamGenerateContent (?alt=sse: SSE, else a JSON array)
//   GET  /v1/models             the model list
//   GET  /__stats               counters (the last Authorization is shown masked)
//   POST /__reset               zero the counters
//   GET  /                      "ok"
//
// With `keys`, every request must carry one of them in the protocol's header (`authorization:
// Bearer` / `api-key` / `x-api-key` / `x-goog-api-key`) and no other credential (header or
// `?key=`), else 401 in the provider's error shape; failures use that shape too.
//
// Usage and a provider-like prompt cache: prompt tokens ~ request body bytes / 4. The mock
// remembers, per API key received, the sessions it has served (`prompt_cache_key` in the body,
// else `metadata.user_id`, else the `X-Claude-Code-Session-Id` header; Gemini: the first text
// part, like its implicit prefix cache): the first request of a session on a key reports 0 cached
// tokens (Anthropic: a cache write), a later one on the same key floor(0.9 x prompt tokens).
// Another mock, or another key, has its own cache (a miss).
import http from 'node:http';
import net, { type AddressInfo, type Socket } from 'node:net';
import {
  AUTH_HEADER, anthropicEvents, anthropicMessage, authProblem, embeddingsResponse, errorBody, geminiResponse, geminiStream, routeOf,
  type MockProtocol, type MockRoute, type ProtocolUsage,
} from './mock-protocols';

export type { MockProtocol } from './mock-protocols';

/** How the mock misbehaves. Everything is off by default (a healthy, instant upstream). */
export interface MockBehaviour {
  /** Which requests fail with `failStatus`: 1 = all, 0.5 = every 2nd (deterministic), 0 = none. */
  failRate?: number;
  /** Fail the first N requests (after a reset), then answer normally. */
  failFirst?: number;
  /** Status of a failure. Default 500. */
  failStatus?: number;
  /** Sent as `Retry-After` on failures. */
  retryAfter?: string;
  /**
   * The failure's `error.message`. `{auth}` is replaced by the Authorization value received
   * (to test that a gateway never leaks an upstream echo of its key).
   */
  failMessage?: string;
  /** Wait this long before answering (ms); above a client's timeout it simulates a timeout. */
  delayMs?: number;
  /** Delay between SSE chunks (ms). */
  chunkGapMs?: number;
  /**
   * Cut the connection after N body chunks of a successful answer (SSE events; for JSON, N > 0
   * sends half the body). 0 cuts right after the response headers.
   */
  cutAfterChunks?: number;
  /** Apply `cutAfterChunks` to the first N successful answers only (default: all). */
  cutFirst?: number;
  /** Reset the connection without answering. */
  dropConnection?: boolean;
  /**
   * Extra headers on every answer of the completion routes (success and failure). In values,
   * `{auth}` is replaced by the Authorization received, `{token}` by its bearer token and
   * `{token_url}` by that token percent-encoded (to test
   * that a gateway never passes an upstream's echo of its key back to the caller).
   */
  headers?: Record<string, string>;
  /** Fail (with `failStatus`) every request that carries this header (an upstream rejecting e.g. a foreign `openai-organization`). */
  failIfHeader?: string;
  /** Fail (with `failStatus`, and `retryAfter`) every request authenticated with one of these keys (a rate-limited account). */
  failKeys?: string[];
  /**
   * Pad streamed answers with SSE comment lines (16 KiB each, before the first event) up to at
   * least this many bytes, honouring backpressure: a client that does not read keeps the mock
   * waiting for 'drain' (to test that a gateway aborts such an upstream answer when its client goes).
   */
  streamBytes?: number;
  /** Keep a prompt cache per key and session (see the top of this file). Default true; false: `cached_tokens` is always 0. */
  promptCache?: boolean;
  /** Replaces the `usage` object of every answer (to test a gateway against absurd counts). */
  usageOverride?: Record<string, unknown>;
}

export interface MockUpstreamOptions extends MockBehaviour {
  /** The provider protocol spoken (routes, auth header, error shapes). Default 'openai'. */
  protocol?: MockProtocol;
  /**
   * The channel keys accepted. When given, a request without one of them in the protocol's header,
   * or with any other credential (a caller's `authorization`, `x-api-key`, `api-key`,
   * `x-goog-api-key`, `?key=`), gets 401 in the provider's shape. Default: no check.
   */
  keys?: string[];
  /** Label echoed in the completion text ("Hello from <name>") and in the stats. */
  name?: string;
  /** Default 0 (a free port). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** The model named in answers. Default: the request's model, else gpt-4o-mini. */
  model?: string;
}

export interface MockRequestRecord {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

export interface MockStats {
  hits: number;
  ok: number;
  failed: number;
  streamed: number;
  cut: number;
  dropped: number;
  /** Requests answered 401 by the `keys` check. */
  rejected: number;
  paths: Record<string, number>;
  /** Answers whose connection closed before they finished (the client aborted them). */
  aborted: number;
  /** The last request as received (tests only; never printed). */
  last?: MockRequestRecord;
}

export interface MockUpstream {
  readonly name: string;
  readonly port: number;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  readonly stats: MockStats;
  /** Answers in progress now (received, response not yet finished or closed). */
  readonly open: number;
  /** Every request received on any path (the raw request target), the last 100; tests only, never printed. */
  readonly requests: MockRequestRecord[];
  /** Changes the behaviour for the next requests (merged into the current one). */
  set(behaviour: MockBehaviour): void;
  /** Zeroes the counters (and the failFirst / cutFirst countdowns). */
  reset(): void;
  close(): Promise<void>;
}

const CREATED = 1700000000;

function emptyStats(): MockStats {
  return { hits: 0, ok: 0, failed: 0, streamed: 0, cut: 0, dropped: 0, rejected: 0, paths: {}, aborted: 0 };
}

/** The usage of one answer, in the mock's own terms. */
interface MockUsage {
  prompt: number;
  cached: number;
  completion: number;
}

const COMPLETION_TOKENS = 4;
/** Bounds of the prompt cache: keys, and sessions per key (the oldest is forgotten first). */
const CACHE_KEYS = 1000;
const CACHE_SESSIONS = 10_000;

function chatUsage(u: MockUsage): Record<string, unknown> {
  return { prompt_tokens: u.prompt, completion_tokens: u.completion, total_tokens: u.prompt + u.completion, prompt_tokens_details: { cached_tokens: u.cached } };
}

function responsesUsage(u: MockUsage): Record<string, unknown> {
  return {
    input_tokens: u.prompt,
    input_tokens_details: { cached_tokens: u.cached },
    output_tokens: u.completion,
    output_tokens_details: { reasoning_tokens: 0 },
    total_tokens: u.prompt + u.completion,
  };
}

/** The session a request belongs to, as a provider's prompt cache would key it. */
function sessionOf(req: http.IncomingMessage, parsed: Record<string, unknown>): string | undefined {
  if (typeof parsed.prompt_cache_key === 'string' && parsed.prompt_cache_key) return `pck:${parsed.prompt_cache_key}`;
  const meta = parsed.metadata;
  if (meta && typeof meta === 'object' && typeof (meta as { user_id?: unknown }).user_id === 'string') return `uid:${(meta as { user_id: string }).user_id}`;
  const h = req.headers['x-claude-code-session-id'];
  if (typeof h === 'string' && h) return `ccs:${h}`;
  // Gemini: an implicit prefix cache, keyed here by the first text part
  const contents = parsed.contents;
  const first = Array.isArray(contents) ? (contents[0] as { parts?: Array<{ text?: unknown }> } | undefined)?.parts?.[0]?.text : undefined;
  return typeof first === 'string' && first ? `pfx:${first.slice(0, 256)}` : undefined;
}

function chatJson(name: string, model: string, usage: Record<string, unknown>): string {
  return JSON.stringify({
    id: `chatcmpl-mock-${name}`,
    object: 'chat.completion',
    created: CREATED,
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: `Hello from ${name}`, refusal: null }, logprobs: null, finish_reason: 'stop' }],
    usage,
    system_fingerprint: 'fp_mock',
  });
}

/** Chat stream chunks; with `usage` (include_usage) every chunk has `usage: null` and a last one carries it. */
function chatChunks(name: string, model: string, usage?: Record<string, unknown>): string[] {
  const base = { id: `chatcmpl-mock-${name}`, object: 'chat.completion.chunk', created: CREATED, model, system_fingerprint: 'fp_mock' };
  const chunk = (delta: Record<string, unknown>, finish: string | null = null) =>
    `data: ${JSON.stringify({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...(usage ? { usage: null } : {}) })}\n\n`;
  return [
    chunk({ role: 'assistant', content: '' }),
    chunk({ content: 'Hello' }),
    chunk({ content: ' from' }),
    chunk({ content: ` ${name}` }),
    chunk({}, 'stop'),
    ...(usage ? [`data: ${JSON.stringify({ ...base, choices: [], usage })}\n\n`] : []),
    'data: [DONE]\n\n',
  ];
}

function responseObject(name: string, model: string, status: 'in_progress' | 'completed', usage: Record<string, unknown>): Record<string, unknown> {
  const done = status === 'completed';
  return {
    id: `resp_mock_${name}`,
    object: 'response',
    created_at: CREATED,
    status,
    model,
    output: done
      ? [{ type: 'message', id: `msg_mock_${name}`, status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: `Hello from ${name}`, annotations: [] }] }]
      : [],
    usage: done ? usage : null,
  };
}

function responseEvents(name: string, model: string, usage: Record<string, unknown>): string[] {
  const ev = (type: string, data: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  return [
    ev('response.created', { response: responseObject(name, model, 'in_progress', usage) }),
    ev('response.output_text.delta', { item_id: `msg_mock_${name}`, output_index: 0, content_index: 0, delta: 'Hello' }),
    ev('response.output_text.delta', { item_id: `msg_mock_${name}`, output_index: 0, content_index: 0, delta: ` from ${name}` }),
    ev('response.output_text.done', { item_id: `msg_mock_${name}`, output_index: 0, content_index: 0, text: `Hello from ${name}` }),
    ev('response.completed', { response: responseObject(name, model, 'completed', usage) }),
  ];
}

/** Starts a mock upstream; resolves once it listens. */
export function startMockUpstream(options: MockUpstreamOptions = {}): Promise<MockUpstream> {
  const host = options.host ?? '127.0.0.1';
  const protocol: MockProtocol = options.protocol ?? 'openai';
  const keys = options.keys ? new Set(options.keys) : undefined;
  let behaviour: MockBehaviour = { ...options };
  let name = options.name ?? 'mock';
  const stats = emptyStats();
  let n = 0;
  let okN = 0;
  const sockets = new Set<Socket>();
  let open = 0;
  const requests: MockRequestRecord[] = [];
  const timers = new Set<NodeJS.Timeout>();
  // the prompt cache: API key received -> sessions served on it (insertion order: oldest first)
  const cache = new Map<string, Set<string>>();
  const usageOf = (auth: string, session: string | undefined, bodyBytes: number): MockUsage & { fresh: boolean } => {
    const prompt = Math.max(1, Math.ceil(bodyBytes / 4));
    let cached = 0;
    let fresh = false;
    if (session !== undefined && behaviour.promptCache !== false) {
      let seen = cache.get(auth);
      if (!seen) {
        if (cache.size >= CACHE_KEYS) cache.delete(cache.keys().next().value as string);
        cache.set(auth, (seen = new Set()));
      }
      if (seen.has(session)) cached = Math.floor(0.9 * prompt);
      else {
        if (seen.size >= CACHE_SESSIONS) seen.delete(seen.values().next().value as string);
        seen.add(session);
        fresh = true;
      }
    }
    return { prompt, cached, completion: COMPLETION_TOKENS, fresh };
  };
  // pending delays are dropped on close(), so a stopped mock holds no timers
  const sleep = (ms: number) =>
    new Promise<void>((r) => {
      const t = setTimeout(() => {
        timers.delete(t);
        r();
      }, ms);
      timers.add(t);
    });

  const shouldFail = (): boolean => {
    n += 1;
    if (behaviour.failFirst !== undefined && n <= behaviour.failFirst) return true;
    const rate = Math.min(1, Math.max(0, behaviour.failRate ?? 0));
    if (rate <= 0) return false;
    return Math.floor(n * rate) > Math.floor((n - 1) * rate);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse, raw: string, path: string, route: MockRoute) => {
    stats.hits += 1;
    stats.paths[path] = (stats.paths[path] ?? 0) + 1;
    stats.last = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: raw };
    const b = behaviour;
    const authHeader = req.headers[AUTH_HEADER[protocol]];
    const auth = typeof authHeader === 'string' ? authHeader : '';
    const extra: http.OutgoingHttpHeaders = {};
    const token = auth.replace(/^bearer\s+/i, '');
    for (const [k, v] of Object.entries(b.headers ?? {})) extra[k] = v.split('{auth}').join(auth).split('{token_url}').join(encodeURIComponent(token)).split('{token}').join(token);
    if (b.delayMs) await sleep(b.delayMs);
    if (res.destroyed) return;
    if (b.dropConnection) {
      stats.dropped += 1;
      req.socket.destroy();
      return;
    }
    const refuse = (b.failIfHeader !== undefined && req.headers[b.failIfHeader.toLowerCase()] !== undefined) || (b.failKeys !== undefined && b.failKeys.includes(token));
    if (shouldFail() || refuse) {
      stats.failed += 1;
      const status = b.failStatus ?? 500;
      const message = (b.failMessage ?? `mock ${name} failure (${status})`).split('{auth}').join(auth);
      const body = protocol === 'openai' || protocol === 'azure'
        ? JSON.stringify({ error: { message, type: status === 429 ? 'rate_limit_exceeded' : 'server_error', param: null, code: null } })
        : errorBody(protocol, status, message);
      const h: http.OutgoingHttpHeaders = { ...extra, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
      if (b.retryAfter !== undefined) h['retry-after'] = b.retryAfter;
      res.writeHead(status, h);
      res.end(body);
      return;
    }
    const reject = (status: number, message: string) => {
      const body = errorBody(protocol, status, message);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    const problem = keys ? authProblem(protocol, req, keys) : undefined;
    if (problem) {
      stats.rejected += 1;
      reject(401, `mock ${name}: ${problem}`);
      return;
    }
    if (protocol === 'azure' && !/[?&]api-version=[^&]/.test(req.url ?? '')) {
      reject(404, 'Resource not found (api-version query parameter missing)');
      return;
    }
    if (protocol === 'anthropic' && req.headers['anthropic-version'] === undefined) {
      reject(400, 'anthropic-version: header is required');
      return;
    }
    let parsed: { model?: unknown; stream?: unknown; stream_options?: unknown } = {};
    if (raw) {
      try {
        const j = JSON.parse(raw) as unknown;
        if (j && typeof j === 'object' && !Array.isArray(j)) parsed = j as typeof parsed;
      } catch {
        /* answer non-streamed */
      }
    }
    const model = options.model ?? route.pathModel ?? (typeof parsed.model === 'string' ? parsed.model : 'gpt-4o-mini');
    okN += 1;
    const cut = b.cutAfterChunks !== undefined && (b.cutFirst === undefined || okN <= b.cutFirst) ? b.cutAfterChunks : undefined;
    const kind = route.kind;
    const responses = kind === 'responses';
    const counts = usageOf(auth, sessionOf(req, parsed as Record<string, unknown>), Buffer.byteLength(raw));
    const usage = b.usageOverride ?? (responses ? responsesUsage(counts) : chatUsage(counts));
    const native: ProtocolUsage = { ...counts, written: counts.fresh ? Math.floor(0.9 * counts.prompt) : 0 };
    const streamed = kind === 'gemini-stream' || (kind !== 'gemini' && kind !== 'embeddings' && parsed.stream === true);
    if (!streamed) {
      const text = kind === 'messages' ? anthropicMessage(name, model, native)
        : kind === 'gemini' ? geminiResponse(name, model, native)
          : kind === 'embeddings' ? embeddingsResponse(model, parsed as Record<string, unknown>, counts.prompt)
            : responses ? JSON.stringify(responseObject(name, model, 'completed', usage)) : chatJson(name, model, usage);
      const body = Buffer.from(text);
      res.writeHead(200, { ...extra, 'content-type': 'application/json', 'content-length': body.length });
      if (cut !== undefined) {
        stats.cut += 1;
        if (cut > 0) res.write(body.subarray(0, body.length >> 1));
        else res.flushHeaders();
        setImmediate(() => req.socket.destroy());
        return;
      }
      stats.ok += 1;
      res.end(body);
      return;
    }
    stats.streamed += 1;
    const sse = kind !== 'gemini-stream' || /[?&]alt=sse(?:&|$)/.test(req.url ?? '');
    res.writeHead(200, { ...extra, 'content-type': sse ? 'text/event-stream; charset=utf-8' : 'application/json', 'cache-control': 'no-cache' });
    if (b.streamBytes) {
      const pad = `: ${'x'.repeat(16 * 1024 - 4)}\n\n`;
      for (let sent = 0; sent < b.streamBytes; sent += pad.length) {
        if (res.destroyed) return;
        if (!res.write(pad)) {
          await new Promise<void>((r) => {
            const done = () => {
              res.off('drain', done);
              res.off('close', done);
              r();
            };
            res.on('drain', done);
            res.on('close', done);
          });
        }
      }
    }
    const includeUsage = (parsed.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
    const chunks = kind === 'messages' ? anthropicEvents(name, model, native)
      : kind === 'gemini-stream' ? geminiStream(name, model, native, sse)
        : responses ? responseEvents(name, model, usage) : chatChunks(name, model, includeUsage ? usage : undefined);
    for (let i = 0; i < chunks.length; i++) {
      if (cut !== undefined && i >= cut) {
        stats.cut += 1;
        if (i === 0) res.flushHeaders();
        // let the written bytes leave before the reset
        await sleep(10);
        req.socket.destroy();
        return;
      }
      res.write(chunks[i]);
      if (b.chunkGapMs) await sleep(b.chunkGapMs);
      if (res.destroyed) return;
    }
    stats.ok += 1;
    res.end();
  };

  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    open += 1;
    res.once('close', () => {
      open -= 1;
      if (!res.writableFinished) stats.aborted += 1;
    });
    const record: MockRequestRecord = { method: req.method ?? '', path: url, headers: req.headers, body: '' };
    requests.push(record);
    if (requests.length > 100) requests.shift();
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const route = req.method === 'POST' ? routeOf(protocol, path) : undefined;
    if (route) {
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => {
        record.body = Buffer.concat(chunks).toString('utf8');
        handle(req, res, record.body, path, route).catch(() => res.destroy());
      });
      return;
    }
    req.resume();
    if (req.method === 'GET' && path === '/v1/models') {
      const body = JSON.stringify({ object: 'list', data: [{ id: options.model ?? 'gpt-4o-mini', object: 'model', created: CREATED, owned_by: name }] });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(body);
      return;
    }
    if (req.method === 'GET' && path === '/__stats') {
      const auth = stats.last?.headers.authorization;
      const { last: _last, ...counters } = stats;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ name, ...counters, lastAuth: auth ? `${auth.slice(0, 12)}…` : null }));
      return;
    }
    if (req.method === 'POST' && path === '/__reset') {
      api.reset();
      res.writeHead(204);
      res.end();
      return;
    }
    if (req.method === 'GET' && path === '/') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(protocol === 'openai'
      ? JSON.stringify({ error: { message: `mock ${name}: no route ${req.method} ${path}`, type: 'invalid_request_error', code: 'not_found' } })
      : errorBody(protocol, 404, `mock ${name} (${protocol}): no route ${req.method} ${path}`));
  });
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });

  const api: MockUpstream = {
    get name() {
      return name;
    },
    port: 0,
    url: '',
    stats,
    get open() {
      return open;
    },
    requests,
    set(b: MockBehaviour) {
      behaviour = { ...behaviour, ...b };
    },
    reset() {
      Object.assign(stats, emptyStats());
      delete stats.last;
      requests.length = 0;
      n = 0;
      okN = 0;
    },
    close() {
      return new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const t of timers) clearTimeout(t);
        timers.clear();
        for (const s of sockets) s.destroy();
      });
    },
  };

  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      const { port } = server.address() as AddressInfo;
      if (!options.name) name = `mock-${port}`;
      Object.assign(api, { port, url: `http://${host}:${port}` });
      resolve(api);
    });
  });
}

/**
 * A loopback URL where nothing listens: connection refused. Port 1 (privileged: no test or mock
 * can take it, unlike a released free port, which the next `listen(0)` in another test may get
 * and answer on); only if something does listen there, a port taken and released.
 */
export async function closedPortUrl(host = '127.0.0.1'): Promise<string> {
  const refused = await new Promise<boolean>((resolve) => {
    const socket = net.connect({ host, port: 1 });
    socket.once('connect', () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code === 'ECONNREFUSED'));
  });
  if (refused) return `http://${host}:1`;
  return new Promise((resolve, reject) => {
    const s = http.createServer();
    s.once('error', reject);
    s.listen(0, host, () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(`http://${host}:${port}`));
    });
  });
}

if (require.main === module) {
  const env = process.env;
  const num = (v: string | undefined) => (v === undefined || v === '' ? undefined : Number(v));
  void startMockUpstream({
    name: env.MOCK_NAME,
    port: num(env.PORT) ?? 18001,
    failRate: num(env.MOCK_FAIL_RATE),
    failStatus: num(env.MOCK_FAIL_STATUS),
    retryAfter: env.MOCK_RETRY_AFTER,
    delayMs: num(env.MOCK_DELAY_MS),
    chunkGapMs: num(env.MOCK_STREAM_GAP_MS),
    cutAfterChunks: num(env.MOCK_CUT_AFTER),
    protocol: (env.MOCK_PROTOCOL || undefined) as MockProtocol | undefined,
  }).then((m) => {
    console.log(`mock ${m.name} listening on ${m.url}`);
    for (const sig of ['SIGTERM', 'SIGINT'] as const) process.on(sig, () => void m.close().then(() => process.exit(0)));
  });
}
