// Example LLM gateway: auth stub (tokens.json) + distributor() + relay(), on the memory store.
// It serves the OpenAI API (/v1/chat/completions, /v1/responses, /v1/embeddings), Anthropic's
// /v1/messages and Gemini's /v1beta/models/{model}:generateContent / :streamGenerateContent, in
// front of mock upstreams of each protocol (OpenAI, Azure, Anthropic, Gemini).
//
//   npm start                      # channels.json, with the built-in mock upstreams it starts itself
//   npm run start:adaptive         # adaptive.json: lowest-latency, per-key limits with a queue,
//                                  # outlier ejection, key rotation, hedging (STRATEGY=least-busy|
//                                  # least-usage|weighted|lowest-latency overrides the strategy)
//   PORT=8080 npm start
//   CHANNELS=http://127.0.0.1:18001,http://127.0.0.1:18002 FALLBACK_CHANNELS=http://127.0.0.1:18009,http://127.0.0.1:18002 \
//     PORT=18200 npx tsx examples/gateway/server.ts   # point it at external upstreams (the bench harness does this)
//
// Env: PORT (default 3000; 0 = a free port), HOST (default 127.0.0.1), CHANNELS / FALLBACK_CHANNELS
// (comma-separated base URLs; when set, channels.json and the mocks are not used), MODELS (models
// of env channels, default "gpt-4o-mini,gpt-4o"), CHANNEL_KEY (their key, default "sk-mock"),
// CHANNELS_FILE, TOKENS_FILE, TRACE (1/0: x-distributor-trace header; default on with
// channels.json, off with CHANNELS), ADMIN_TOKEN (the bearer token of /admin/distributor; unset:
// that router answers loopback callers only).
//
// Does affinity pay? `GET /metrics` has distributor_tokens_total{rule,channel,kind,affinity} (the
// relay reports each answer's usage; the mocks keep a prompt cache per key and session), and
// `GET /admin/distributor/affinity` has per rule the lookups, hits and cached ratios.
//
// Routing: the token's group picks the channels ("default", "vip", "fallback"); the header
// `x-bench-route: fallback` switches a request to the "fallback" group (used by the bench).
// Everything listens on and talks to 127.0.0.1 only: it works offline.
import express, { type NextFunction, type Request, type Response } from 'express';
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Registry } from 'prom-client';
import {
  ChannelRegistry, MemoryStore, defaultAffinityRules, distributor, type ChannelInput, type DistributorHandler, type DistributorOptions,
  type RequestContext, type SelectionStrategy,
} from '../../lib';
import { timingSafeEqual } from 'node:crypto';
import { adminRouter } from '../../lib/entry/admin';
import { distributorMetrics } from '../../lib/entry/metrics';
import { relay, type RelayHandler, type RelayOptions } from '../../lib/entry/relay';
import { closedPortUrl, startMockUpstream, type MockBehaviour, type MockProtocol, type MockUpstream } from './mock-upstream';

export interface GatewayOptions {
  /** Default: env PORT, else 3000. 0 picks a free port. */
  port?: number;
  /** Default: env HOST, else 127.0.0.1. */
  host?: string;
  /** Environment to read (default `process.env`). */
  env?: NodeJS.ProcessEnv;
}

export interface Gateway {
  url: string;
  port: number;
  server: Server;
  /** The built-in mock upstreams by name (empty when CHANNELS is set). */
  mocks: Record<string, MockUpstream>;
  distributor: DistributorHandler;
  relay: RelayHandler;
  /**
   * The curl lines printed at start: plain, sticky session, failover, the affinity report, the
   * token metrics; then Anthropic Messages, Gemini generateContent, embeddings, and an Azure channel.
   * A channels file with `try` prints its own (`tries` holds what each shows).
   */
  curls: string[];
  /** What each of `curls` shows, when the channels file says (`try`). */
  tries?: string[];
  close(): Promise<void>;
}

interface ChannelsFile {
  mocks?: Record<string, MockBehaviour & { refuse?: boolean; protocol?: MockProtocol }>;
  channels: ChannelInput[];
  /** Options merged into distributor()'s (adaptive.json: selection, health, retry). */
  distributor?: Pick<DistributorOptions, 'selection' | 'health' | 'retry'>;
  /** relay() options (adaptive.json: hedge). */
  relay?: Pick<RelayOptions, 'hedge' | 'timeoutMs'>;
  /** The curl lines printed at start, `{url}` replaced by the gateway's URL (default: channels.json's). */
  try?: Array<{ say: string; curl: string }>;
}

type TokenEntry = RequestContext & { name?: string };

const RELAY_PATHS = ['/v1/chat/completions', '/v1/completions', '/v1/responses', '/v1/embeddings', '/v1/messages'];
/** Gemini's native paths: `/v1beta/models/{model}:generateContent` and `:streamGenerateContent`. */
const GEMINI_PATH = /^\/v1beta\/models\/[^/]+:(?:generateContent|streamGenerateContent)$/;

function readJson<T>(file: string): T {
  return JSON.parse(readFileSync(file, 'utf8')) as T;
}

function openAiError(res: Response, status: number, message: string, type: string, code: string): void {
  res.status(status).json({ error: { message, type, code } });
}

/** The gateway's own 401, in the shape of the protocol the caller speaks (by path). */
function unauthorized(req: Request, res: Response, message: string): void {
  if (req.path.startsWith('/v1/messages')) res.status(401).json({ type: 'error', error: { type: 'authentication_error', message } });
  else if (req.path.startsWith('/v1beta/')) res.status(401).json({ error: { code: 401, message, status: 'UNAUTHENTICATED' } });
  else openAiError(res, 401, message, 'invalid_request_error', 'invalid_api_key');
}

/**
 * The caller's gateway token, as each SDK sends its API key: `Authorization: Bearer` (OpenAI),
 * `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini), `api-key` (Azure clients).
 * relay() never forwards any of them: the upstream gets the channel's key.
 */
function callerToken(req: Request): string | undefined {
  const h = req.headers.authorization;
  if (h && h.length > 7 && h.slice(0, 7).toLowerCase() === 'bearer ') return h.slice(7).trim();
  for (const name of ['x-api-key', 'x-goog-api-key', 'api-key']) {
    const v = req.headers[name];
    if (typeof v === 'string' && v.trim()) return v.trim();
  }
  const q = req.originalUrl.indexOf('?');
  if (q !== -1) {
    const key = new URLSearchParams(req.originalUrl.slice(q + 1)).get('key');
    if (key) return key;
  }
  return undefined;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

/**
 * The admin router's guard: with ADMIN_TOKEN, `Authorization: Bearer <ADMIN_TOKEN>` (compared in
 * constant time); without, callers on the loopback interface only (the socket's address, never a
 * forwarded header), so a gateway started with HOST=0.0.0.0 does not open it to the network.
 */
export function adminGuard(adminToken: string | undefined) {
  const want = adminToken ? Buffer.from(`Bearer ${adminToken}`) : undefined;
  return function guard(req: Request, res: Response, next: NextFunction): void {
    if (want) {
      const got = Buffer.from(req.headers.authorization ?? '');
      if (got.length === want.length && timingSafeEqual(got, want)) {
        next();
        return;
      }
      openAiError(res, 401, 'Admin token required', 'invalid_request_error', 'invalid_api_key');
      return;
    }
    if (LOOPBACK.has(req.socket.remoteAddress ?? '')) {
      next();
      return;
    }
    openAiError(res, 403, 'The admin API answers loopback callers only (set ADMIN_TOKEN to open it)', 'invalid_request_error', 'forbidden');
  };
}

/** Channels from CHANNELS / FALLBACK_CHANNELS (comma-separated base URLs). */
function channelsFromEnv(env: NodeJS.ProcessEnv): ChannelInput[] {
  const list = (v: string | undefined) => (v ?? '').split(',').map((s) => s.trim()).filter(Boolean);
  const models = env.MODELS || 'gpt-4o-mini,gpt-4o';
  const key = env.CHANNEL_KEY || 'sk-mock';
  const main = list(env.CHANNELS);
  const fallback = list(env.FALLBACK_CHANNELS);
  return [
    // one tier, equal weights: an even spread
    ...main.map((baseUrl, i) => ({ id: i + 1, name: `ch${i + 1}`, group: 'default', models, priority: 0, weight: 1, baseUrl, key })),
    // listed order = priority order: the first is tried first, the next ones on failure
    ...fallback.map((baseUrl, i) => ({ id: 101 + i, name: `fallback${i + 1}`, group: 'fallback', models, priority: fallback.length - i, baseUrl, key })),
  ];
}

const MOCK_URL = /^mock:\/\/([^/]+)(.*)$/;

/**
 * Starts the mocks named in channels.json and resolves `mock://<name>` base URLs to them. Each
 * mock accepts exactly the keys of the channels that point at it, in its protocol's header (401
 * otherwise), so a relay that sent the caller's credential or the wrong header fails visibly.
 */
async function channelsFromFile(cfg: ChannelsFile, file: string, mocks: Record<string, MockUpstream>): Promise<ChannelInput[]> {
  const keys = new Map<string, string[]>();
  for (const c of cfg.channels) {
    const m = typeof c.baseUrl === 'string' ? MOCK_URL.exec(c.baseUrl) : null;
    const spec = m ? cfg.mocks?.[m[1]] : undefined;
    if (!m || !spec || spec.refuse) continue;
    const type = c.type ?? 'openai';
    if (type !== (spec.protocol ?? 'openai')) throw new Error(`channel ${c.id}: type "${type}" but mock "${m[1]}" speaks ${spec.protocol ?? 'openai'}`);
    const list = keys.get(m[1]) ?? [];
    for (const k of typeof c.key === 'string' ? [c.key] : Array.isArray(c.key) ? c.key : []) list.push(k);
    keys.set(m[1], list);
  }
  const urls: Record<string, string> = {};
  for (const [name, spec] of Object.entries(cfg.mocks ?? {})) {
    if (spec.refuse) {
      urls[name] = await closedPortUrl();
      continue;
    }
    const m = await startMockUpstream({ ...spec, name, keys: keys.get(name) ?? [] });
    mocks[name] = m;
    urls[name] = m.url;
  }
  return cfg.channels.map((c) => {
    const m = typeof c.baseUrl === 'string' ? MOCK_URL.exec(c.baseUrl) : null;
    if (!m) return c;
    if (!urls[m[1]]) throw new Error(`channel ${c.id}: no mock named "${m[1]}" in ${path.basename(file)}`);
    return { ...c, baseUrl: urls[m[1]] + m[2] };
  });
}

/** The auth stub: the caller's token (see callerToken) from tokens.json -> res.locals.token. */
function authStub(tokensFile: string) {
  const tokens = new Map<string, TokenEntry>(Object.entries(readJson<{ tokens: Record<string, TokenEntry> }>(tokensFile).tokens));
  const fallbackCtx = new Map<string, TokenEntry>();
  return function auth(req: Request, res: Response, next: NextFunction): void {
    const token = callerToken(req);
    let ctx = token === undefined ? undefined : tokens.get(token);
    if (!ctx || token === undefined) {
      unauthorized(req, res, token === undefined ? 'Missing bearer token' : 'Invalid API key');
      return;
    }
    if (req.headers['x-bench-route'] === 'fallback') {
      let f = fallbackCtx.get(token);
      if (!f) fallbackCtx.set(token, (f = { ...ctx, group: 'fallback' }));
      ctx = f;
    }
    res.locals.token = ctx;
    next();
  };
}

export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  const env = options.env ?? process.env;
  const host = options.host ?? env.HOST ?? '127.0.0.1';
  const port = options.port ?? (env.PORT !== undefined && env.PORT !== '' ? Number(env.PORT) : 3000);
  const fromEnv = Boolean(env.CHANNELS || env.FALLBACK_CHANNELS);
  const mocks: Record<string, MockUpstream> = {};
  const closeMocks = () => Promise.all(Object.values(mocks).map((m) => m.close()));

  let channels: ChannelInput[];
  const file = env.CHANNELS_FILE || path.join(__dirname, 'channels.json');
  const cfg: ChannelsFile | undefined = fromEnv ? undefined : readJson<ChannelsFile>(file);
  try {
    channels = cfg ? await channelsFromFile(cfg, file, mocks) : channelsFromEnv(env);
  } catch (e) {
    await closeMocks();
    throw e;
  }
  const tuned = cfg?.distributor ?? {};
  const strategy = env.STRATEGY as SelectionStrategy | undefined;
  const selection = strategy ? { ...tuned.selection, strategy } : tuned.selection;
  const trace = env.TRACE !== undefined ? env.TRACE === '1' : !fromEnv;

  // Prometheus metrics from the distributor's hooks, on a registry of this gateway's own.
  const metricsRegistry = new Registry();
  const metrics = distributorMetrics({ registry: metricsRegistry });
  const mw = distributor({
    on: metrics.hooks,
    channels: new ChannelRegistry(channels),
    store: new MemoryStore(),
    // Unlike the reference's default, a failing pinned session may move to another channel
    // (the pin follows it): new-api #4541.
    affinity: { rules: defaultAffinityRules().map((r) => ({ ...r, skipRetryOnFailure: false })) },
    retry: { times: 2, ...tuned.retry },
    // With the demo channels, a channel failing 3 times within 60 s rests for 30 s. Off for env
    // channels, so every request of a benchmark takes the same path.
    // (a channels file's own `distributor.health` replaces this)
    health: tuned.health ?? (fromEnv ? {} : { cooldown: {} }),
    ...(selection ? { selection } : {}),
    traceHeader: trace,
  });
  // Claude Code's session header goes upstream too (Anthropic receives it from Claude Code directly; the mocks key their prompt cache by it)
  const fwd = relay({ forwardHeaders: ['x-claude-code-session-id'], ...cfg?.relay });

  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.get('/healthz', (_req, res) => {
    res.json({ status: 'ok' });
  });
  app.get('/metrics', (_req, res, next) => {
    metricsRegistry.metrics().then((text) => res.type(metricsRegistry.contentType).send(text), next);
  });
  // pins, channel health and the affinity report (GET /admin/distributor/affinity)
  app.use('/admin/distributor', adminRouter(mw, { guard: adminGuard(env.ADMIN_TOKEN || undefined) }));
  const auth = authStub(env.TOKENS_FILE || path.join(__dirname, 'tokens.json'));
  app.get('/v1/models', auth, (_req, res) => {
    const token = res.locals.token as RequestContext;
    const group = token.group ?? 'default';
    const ids = new Set<string>();
    for (const c of mw.registry.list()) {
      if (!c.groups.includes(group)) continue;
      for (const m of c.models) if (!token.modelLimits || token.modelLimits.includes(m)) ids.add(m);
    }
    res.json({ object: 'list', data: [...ids].sort().map((id) => ({ id, object: 'model', created: 0, owned_by: 'gateway' })) });
  });
  app.use('/v1', auth, mw);
  app.use('/v1beta', auth, mw);
  app.post(RELAY_PATHS, fwd);
  app.post(GEMINI_PATH, fwd);
  app.use((_req: Request, res: Response) => openAiError(res, 404, 'Not found', 'invalid_request_error', 'not_found'));

  let server: Server;
  try {
    server = await new Promise<Server>((resolve, reject) => {
      const s = app.listen(port, host);
      s.once('listening', () => resolve(s));
      s.once('error', reject);
    });
  } catch (e) {
    await Promise.all([closeMocks(), fwd.close(), mw.shutdown()]);
    throw e;
  }
  // longer than the clients' idle timeouts, so a keep-alive client never races a server-side close
  server.keepAliveTimeout = 65_000;
  server.headersTimeout = 66_000;
  const actual = (server.address() as AddressInfo).port;
  const url = `http://${host}:${actual}`;

  const json = `-H 'Content-Type: application/json'`;
  const curls = [
    `curl -s ${url}/v1/chat/completions -H 'Authorization: Bearer sk-demo-alice' ${json} -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'`,
    `curl -s ${url}/v1/responses -H 'Authorization: Bearer sk-demo-alice' ${json} -d '{"model":"gpt-4o-mini","input":"Hello!","prompt_cache_key":"demo-session-1"}'`,
    `curl -si ${url}/v1/chat/completions -H 'Authorization: Bearer sk-demo-failover' ${json} -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}]}'`,
    `curl -s ${url}/admin/distributor/affinity${env.ADMIN_TOKEN ? ` -H 'Authorization: Bearer ${env.ADMIN_TOKEN}'` : ''}`,
    `curl -s ${url}/metrics | grep '^distributor_tokens_total'`,
    // native protocols: Anthropic Messages, Gemini, embeddings, an Azure channel behind the OpenAI API
    `curl -s ${url}/v1/messages -H 'x-api-key: sk-demo-alice' -H 'anthropic-version: 2023-06-01' ${json} -d '{"model":"claude-sonnet-4","max_tokens":64,"messages":[{"role":"user","content":"Hello!"}]}'`,
    `curl -s ${url}/v1beta/models/gemini-2.5-flash:generateContent -H 'x-goog-api-key: sk-demo-alice' ${json} -d '{"contents":[{"role":"user","parts":[{"text":"Hello!"}]}]}'`,
    `curl -s ${url}/v1/embeddings -H 'Authorization: Bearer sk-demo-alice' ${json} -d '{"model":"text-embedding-3-small","input":"Hello!"}'`,
    `curl -s ${url}/v1/chat/completions -H 'Authorization: Bearer sk-demo-alice' ${json} -d '{"model":"gpt-4.1","messages":[{"role":"user","content":"Hello!"}]}'`,
  ];

  const tries = cfg?.try?.map((t) => t.say);
  if (cfg?.try) curls.splice(0, curls.length, ...cfg.try.map((t) => t.curl.split('{url}').join(url)));

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 2000).unref();
      });
      await Promise.all([fwd.close(), mw.shutdown(), closeMocks()]);
    })());

  return { url, port: actual, server, mocks, distributor: mw, relay: fwd, curls, tries, close };
}

function banner(gw: Gateway, fromEnv: boolean): string {
  const lines = [`express-channel-distributor example gateway listening on ${gw.url} (memory store)`];
  if (fromEnv) {
    lines.push(`channels from env: ${gw.distributor.registry.list().map((c) => `${c.id}:${c.groups.join('|')}`).join(' ')}`);
    return lines.join('\n');
  }
  lines.push(`built-in mock upstreams: ${Object.values(gw.mocks).map((m) => `${m.name} ${m.url}`).join(', ')}`);
  lines.push('', 'Try:');
  if (gw.tries) {
    gw.tries.forEach((say, i) => lines.push(`  # ${say}`, `  ${gw.curls[i]}`));
    return lines.join('\n');
  }
  lines.push('  # plain: a weighted pick among the top-priority channels (flaky answers 429 every 2nd time: retried elsewhere)');
  lines.push(`  ${gw.curls[0]}`);
  lines.push('  # sticky session: repeat it, the same channel answers ("Hello from ...")');
  lines.push(`  ${gw.curls[1]}`);
  lines.push('  # failover: dead (500) -> offline (connection refused) -> rescue; see the x-distributor-trace header');
  lines.push(`  ${gw.curls[2]}`);
  lines.push('  # does affinity pay? after the sticky session twice: lookups, hits, cached/input ratio on hits vs misses');
  lines.push(`  ${gw.curls[3]}`);
  lines.push('  # the same as Prometheus counters: tokens by rule, channel, kind (input|cached|output|cache_write), affinity (hit|miss|none)');
  lines.push(`  ${gw.curls[4]}`);
  lines.push('  # Anthropic Messages (/v1/messages; the SDK\'s x-api-key is your gateway token; Claude Code sessions stick by X-Claude-Code-Session-Id)');
  lines.push(`  ${gw.curls[5]}`);
  lines.push('  # Gemini (/v1beta/models/{model}:generateContent, :streamGenerateContent?alt=sse; x-goog-api-key or ?key=)');
  lines.push(`  ${gw.curls[6]}`);
  lines.push('  # embeddings (/v1/embeddings)');
  lines.push(`  ${gw.curls[7]}`);
  lines.push('  # an Azure channel behind the OpenAI API: gpt-4.1 maps to deployment gpt41-prod, api-key header, api-version query');
  lines.push(`  ${gw.curls[8]}`);
  return lines.join('\n');
}

if (require.main === module) {
  startGateway().then(
    (gw) => {
      console.log(banner(gw, Boolean(process.env.CHANNELS || process.env.FALLBACK_CHANNELS)));
      const stop = () => {
        const force = setTimeout(() => process.exit(0), 5000);
        force.unref();
        gw.close().then(() => process.exit(0), () => process.exit(1));
      };
      process.once('SIGTERM', stop);
      process.once('SIGINT', stop);
    },
    (err: unknown) => {
      console.error(`gateway failed to start: ${err instanceof Error ? err.message : String(err)}`);
      process.exit(1);
    },
  );
}
