// A real loopback setup for relay() tests: mock upstreams (the example gateway's), an Express app
// with `auth stub -> distributor -> relay`, a listening server, and an undici client that also
// reports aborted responses. Everything started here is stopped by stopAll().
import express, { type NextFunction, type Request, type Response } from 'express';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { Agent, request } from 'undici';
import {
  distributor, type ChannelInput, type Distribution, type DistributorHandler, type DistributorOptions, type RequestContext,
} from '../../lib';
import { relay, type RelayHandler, type RelayOptions, type RelayUpstreamError } from '../../lib/entry/relay';
import { closedPortUrl, startMockUpstream, type MockUpstream, type MockUpstreamOptions } from '../../examples/gateway/mock-upstream';
import { memoryLogger } from './create-app';

export const MODEL = 'gpt-4o-mini';
export const CLIENT_TOKEN = 'sk-client-secret-token-123';

const stops: Array<() => Promise<void> | void> = [];

export async function stopAll(): Promise<void> {
  while (stops.length) await stops.pop()?.();
}

export async function mock(options: MockUpstreamOptions = {}): Promise<MockUpstream> {
  const m = await startMockUpstream(options);
  stops.push(() => m.close());
  return m;
}

export { closedPortUrl };

/** A channel pointing at a mock (`/v1` base URL, as OpenAI-compatible providers document it). */
export function ch(id: number, target: MockUpstream | string, extra: Partial<ChannelInput> = {}): ChannelInput {
  const base = typeof target === 'string' ? target : target.url;
  return { id, name: `ch${id}`, models: [MODEL], baseUrl: `${base}/v1`, key: `sk-upstream-key-${id}-secret`, ...extra };
}

export interface Gateway {
  url: string;
  mw: DistributorHandler;
  fwd: RelayHandler;
  /** Every request's distribution, in arrival order (the live object). */
  seen: Distribution[];
  last(): Distribution;
  errors: RelayUpstreamError[];
}

export async function gateway(
  channels: ChannelInput[],
  options: Partial<DistributorOptions> = {},
  relayOptions: RelayOptions = {},
  between?: (req: Request, res: Response, next: NextFunction) => void,
): Promise<Gateway> {
  const app = express();
  app.set('etag', false);
  app.use((req, res, next) => {
    const h = req.headers['x-test-context'];
    res.locals.token = typeof h === 'string' ? (JSON.parse(h) as RequestContext) : {};
    next();
  });
  const errors: RelayUpstreamError[] = [];
  const mw = distributor({ channels, logger: memoryLogger(), ...options } as DistributorOptions);
  const fwd = relay({ onUpstreamError: (e) => errors.push(e), ...relayOptions });
  const seen: Distribution[] = [];
  app.use('/v1', mw);
  app.use((req, res, next) => {
    if (res.locals.distribution) seen.push(res.locals.distribution);
    next();
  });
  if (between) app.use(between);
  app.all(/^\/v1\//, fwd);
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  stops.push(async () => {
    await new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
    await fwd.close();
    await mw.shutdown();
  });
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, mw, fwd, seen, last: () => seen[seen.length - 1], errors };
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
  /** Set when the response body ended abnormally (the server aborted it). */
  aborted?: string;
  json<T = Record<string, unknown>>(): T;
}

const client = new Agent({ keepAliveTimeout: 1000 });

export async function closeClient(): Promise<void> {
  await client.close();
}

/** POSTs JSON (or a raw string) and reads the whole answer, noting an aborted body. */
export async function post(url: string, body: unknown, headers: Record<string, string> = {}, path = '/v1/chat/completions'): Promise<Reply> {
  const r = await request(`${url}${path}`, {
    method: 'POST',
    dispatcher: client,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${CLIENT_TOKEN}`, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const chunks: Buffer[] = [];
  let aborted: string | undefined;
  try {
    for await (const c of r.body) chunks.push(c as Buffer);
  } catch (e) {
    aborted = (e as { code?: string }).code ?? String(e);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return { status: r.statusCode, headers: r.headers, text, aborted, json: <T>() => JSON.parse(text) as T };
}

export const ctx = (c: RequestContext) => ({ 'x-test-context': JSON.stringify(c) });
