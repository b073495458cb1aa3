// A loopback kit for the adaptive routing tests (issue 14): tiny node:http upstreams that count the
// requests they have in flight (and can delay, hold, or fail them), an Express gateway
// `distributor -> a small relay` that forwards to the chosen channel, retries through
// `distribution.retry()` and reports its latency, and an undici client. Nothing of the package is
// mocked; every upstream and gateway started here is closed by stopAdaptive().
import express, { type NextFunction, type Request, type Response } from 'express';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { Agent, request } from 'undici';
import { distributor, type Channel, type DistributorHandler, type DistributorOptions } from '../../lib';
import { memoryLogger } from './create-app';

export const MODEL = 'm-1';

const stops: Array<() => Promise<void> | void> = [];

export async function stopAdaptive(): Promise<void> {
  while (stops.length) await stops.pop()?.();
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Polls `check` until true; throws after `ms`. */
export async function until(check: () => boolean | Promise<boolean>, ms = 5000, what = 'condition'): Promise<void> {
  const start = Date.now();
  while (!(await check())) {
    if (Date.now() - start > ms) throw new Error(`${what} not met within ${ms} ms`);
    await sleep(5);
  }
}

// ---- upstreams ----------------------------------------------------------------------------

export interface Upstream {
  readonly url: string;
  /** Requests the upstream is working on right now. */
  inFlight: number;
  /** The most it ever had at once (since the last reset). */
  maxInFlight: number;
  /** Requests received (since the last reset). */
  count: number;
  /** The bearer token of every request, in arrival order. */
  keys: string[];
  /** Delay before answering (ms). */
  delayMs: number;
  /** The status for the n-th request (0-based) with this bearer key; default 200. */
  status: (n: number, key: string) => number;
  /** While held, requests wait (after being counted in flight) until release(). */
  hold(): void;
  release(): void;
  reset(): void;
  close(): Promise<void>;
}

export async function upstream(opts: { delayMs?: number; status?: Upstream['status'] } = {}): Promise<Upstream> {
  let held = false;
  let waiting: Array<() => void> = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const n = up.count++;
      const key = String(req.headers.authorization ?? '').replace(/^Bearer /, '');
      up.keys.push(key);
      up.inFlight++;
      up.maxInFlight = Math.max(up.maxInFlight, up.inFlight);
      let done = false;
      const leave = () => {
        if (done) return;
        done = true;
        up.inFlight--;
      };
      // a client (the gateway) that goes away ends the upstream's work too
      res.on('close', leave);
      const answer = () => {
        if (done) return;
        const status = up.status(n, key);
        leave(); // out of flight before the gateway can see the answer
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(status < 400 ? { id: `r${n}`, object: 'chat.completion', choices: [] } : { error: { message: `mock ${status}`, type: 'mock' } }));
      };
      const afterDelay = () => (up.delayMs > 0 ? setTimeout(answer, up.delayMs) : answer());
      if (held) waiting.push(afterDelay);
      else afterDelay();
    });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const { port } = server.address() as AddressInfo;
  const up: Upstream = {
    url: `http://127.0.0.1:${port}`,
    inFlight: 0,
    maxInFlight: 0,
    count: 0,
    keys: [],
    delayMs: opts.delayMs ?? 0,
    status: opts.status ?? (() => 200),
    hold: () => {
      held = true;
    },
    release: () => {
      held = false;
      const w = waiting;
      waiting = [];
      for (const f of w) f();
    },
    reset: () => {
      up.count = 0;
      up.maxInFlight = up.inFlight;
      up.keys = [];
    },
    close: () => new Promise<void>((r) => {
      up.release();
      server.close(() => r());
      server.closeAllConnections();
    }),
  };
  stops.push(() => up.close());
  return up;
}

// ---- the gateway --------------------------------------------------------------------------

const upstreamAgent = new Agent({ keepAliveTimeout: 2000, connections: null });
const clientAgent = new Agent({ keepAliveTimeout: 2000, connections: null });

export async function closeAgents(): Promise<void> {
  await Promise.all([upstreamAgent.close(), clientAgent.close()]);
}

export interface RelayAnswer {
  channel: number;
  keyIndex: number | null;
  tried: number[];
  attempts: Array<{ channelId: number; phase: string; status?: number; reason?: string }>;
  trace: string[];
  affinity: { rule: string; hit: boolean; used: boolean; cleared: boolean; stale?: string } | null;
  stopReason: string | null;
  upstreamStatus: number;
}

export interface RelayOptions {
  /** Report each attempt's total time through distribution.reportLatency(). Default true. */
  reportLatency?: boolean;
}

/**
 * The relay step: POSTs the request's raw body to `<channel.baseUrl>/chat/completions` with the
 * channel's key, aborts with the client (distribution.signal), reports latency, and on a status
 * >= 400 asks `retry()` for the next channel. Answers the last upstream status with the record.
 */
export function smallRelay(opts: RelayOptions = {}) {
  return async (req: Request, res: Response): Promise<void> => {
    const d = res.locals.distribution!;
    let ch = res.locals.channel as Channel;
    let status = 502;
    for (;;) {
      const t0 = performance.now();
      try {
        const r = await request(`${ch.baseUrl as string}/chat/completions`, {
          method: 'POST',
          dispatcher: upstreamAgent,
          headers: { 'content-type': 'application/json', authorization: `Bearer ${ch.key ?? ''}` },
          body: req.rawBody ?? undefined,
          signal: d.signal,
        });
        await r.body.text();
        status = r.statusCode;
      } catch {
        if (d.signal.aborted) return; // the client left: nothing to answer
        status = 502;
      }
      if (opts.reportLatency !== false) d.reportLatency(performance.now() - t0);
      if (status < 400) break;
      const next = await d.retry({ status });
      if (!next) break;
      ch = next;
    }
    if (res.headersSent || res.destroyed) return;
    const answer: RelayAnswer = {
      channel: ch.id, keyIndex: ch.keyIndex ?? null, tried: [...d.tried], attempts: d.attempts.map((a) => ({ ...a })), trace: [...d.trace],
      affinity: d.affinity ? { ...d.affinity } : null, stopReason: d.stopReason ?? null, upstreamStatus: status,
    };
    res.status(status).json(answer);
  };
}

export interface Gateway {
  url: string;
  mw: DistributorHandler;
  logger: ReturnType<typeof memoryLogger>;
  close(): Promise<void>;
}

/**
 * `context -> distributor (/v1) -> handler (default: smallRelay()) -> error handler`. Affinity is
 * off unless the options turn it on.
 */
export async function gateway(
  options: Partial<DistributorOptions> & Pick<DistributorOptions, 'channels'>,
  handler: (req: Request, res: Response, next: NextFunction) => unknown = smallRelay(),
): Promise<Gateway> {
  const app = express();
  app.set('etag', false);
  app.use((_req, res, next) => {
    res.locals.token = {};
    next();
  });
  const logger = memoryLogger();
  const mw = distributor({ logger, affinity: { enabled: false }, ...options } as DistributorOptions);
  app.use('/v1', mw);
  app.use(handler);
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (!res.headersSent) res.status(500).json({ error: { message: 'relay failed', type: 'test' } });
    else res.destroy();
    void err;
  });
  const server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
    await mw.shutdown();
  };
  stops.push(close);
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, mw, logger, close };
}

// ---- the client ---------------------------------------------------------------------------

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  json<T = RelayAnswer>(): T;
}

export function post(url: string, body: unknown = { model: MODEL, messages: [{ role: 'user', content: 'hi' }] }, headers: Record<string, string> = {}): Promise<Reply> {
  const p = send(url, body, headers);
  // a request still pending when a test fails (and its servers close) must not crash the run
  p.catch(() => undefined);
  return p;
}

async function send(url: string, body: unknown, headers: Record<string, string>): Promise<Reply> {
  const r = await request(`${url}/v1/chat/completions`, {
    method: 'POST',
    dispatcher: clientAgent,
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await r.body.text();
  return { status: r.statusCode, headers: r.headers, text, json: <T>() => JSON.parse(text) as T };
}

/**
 * Starts a request on its own socket (node:http, no agent) and returns a function that destroys
 * that socket (the client leaving mid-request).
 */
export function postAndAbandon(url: string, body: unknown = { model: MODEL, messages: [] }): { destroy(): void; closed: Promise<void> } {
  const req = http.request(`${url}/v1/chat/completions`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json' } });
  req.on('error', () => undefined);
  const closed = new Promise<void>((r) => req.on('close', () => r()));
  req.end(JSON.stringify(body));
  return { destroy: () => req.destroy(), closed };
}

/** A channel on an upstream. */
export function chan(id: number, up: Upstream, extra: Record<string, unknown> = {}) {
  return { id, name: `ch${id}`, models: [MODEL], baseUrl: up.url, key: `sk-chan-${id}-secret-key`, weight: 1, ...extra };
}
