// Who can change a channel's health (the trust boundary): a caller must never cool down or disable
// a channel for other callers through what it controls — its headers, body, body size, query,
// path, or the gateway's own answers. Every test here plays the hostile tenant of a gateway built
// from the README (`auth -> distributor -> relay`), then checks that the next, innocent caller
// still gets the channel. Each was watched failing on 0.1.0.
import { afterAll, describe, expect, test } from '@jest/globals';
import express, { type Request, type Response } from 'express';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import request from 'supertest';
import {
  ChannelStatus, DistributorError, distributor, type ChannelInput, type Distribution, type DistributorHandler, type DistributorOptions,
} from '../../lib';
import { relay } from '../../lib/entry/relay';
import { memoryLogger } from '../helpers/create-app';
import { sleep } from '../helpers/fake-relay';
import { abandonedPost } from '../helpers/ports';

const handlers: DistributorHandler[] = [];
const closers: Array<() => Promise<void>> = [];
afterAll(async () => {
  for (const c of closers.splice(0)) await c();
  await Promise.all(handlers.map((h) => h.shutdown()));
});

/** A loopback server stopped after the file's tests; resolves to its base URL. */
async function listen(handler: http.RequestListener): Promise<{ url: string; port: number }> {
  const server = http.createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  closers.push(() => new Promise<void>((r) => {
    server.close(() => r());
    server.closeAllConnections();
  }));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, port };
}

/**
 * An upstream that quotes the caller's input back in its 400, as OpenAI does for an invalid
 * enum value (`Invalid value: 'xyz'. Supported values are: ...`), and counts what it saw.
 */
async function echoingUpstream(): Promise<{ url: string; hits: () => number }> {
  let hits = 0;
  const { url } = await listen((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      hits++;
      let effort = '';
      try {
        effort = String((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { reasoning_effort?: unknown }).reasoning_effort ?? '');
      } catch {
        /* no body */
      }
      if (effort) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `Invalid value for 'reasoning_effort': '${effort}'.`, type: 'invalid_request_error', code: 'invalid_value' } }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ id: 'ok', object: 'chat.completion', choices: [] }));
    });
  });
  return { url, hits: () => hits };
}

const three = (baseUrl: string): ChannelInput[] => [1, 2, 3].map((id) => ({ id, models: 'gpt-4o', priority: 10 - id, key: `sk-upstream-${id}-0123456789`, baseUrl: `${baseUrl}/v1` }));

/** `auth -> distributor -> reporting relay`, as the README builds it, plus optional routes after the distributor. */
function gatewayApp(options: Partial<DistributorOptions> & Pick<DistributorOptions, 'channels'>, routes?: (app: express.Express) => void) {
  const app = express();
  app.use(express.json({ limit: '5mb' }));
  const mw = distributor({ logger: memoryLogger(), random: () => 0, ...options } as DistributorOptions);
  handlers.push(mw);
  const fwd = relay();
  closers.push(() => fwd.close());
  app.use('/v1', mw);
  routes?.(app);
  app.post('/v1/chat/completions', fwd);
  return { app, mw };
}

describe('a status seen only at finish is not the channel\'s', () => {
  test('five 404s for an unknown route under the mount path cool nothing', async () => {
    const up = await echoingUpstream();
    const { app, mw } = gatewayApp({ channels: three(up.url), health: { cooldown: { failures: 3, durationMs: 60_000 } } });
    for (let i = 0; i < 5; i++) await request(app).post('/v1/no-such-route').send({ model: 'gpt-4o' }).expect(404);
    await sleep(10);
    expect(mw.isCoolingDown(1)).toBe(false);
    expect(mw.health(1)).toMatchObject({ status: ChannelStatus.Enabled, coolingDown: false });
    // the next caller is served by the top channel
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(up.hits()).toBe(1);
  });

  test('a 401 of the gateway\'s own per-user check (a route after the distributor) disables nothing', async () => {
    const up = await echoingUpstream();
    const { app, mw } = gatewayApp({ channels: three(up.url), health: { autoDisable: {}, cooldown: { failures: 1 } } }, (a) => {
      a.use('/v1', (req, res, next) => (req.headers['x-user-quota'] === 'exhausted' ? res.status(401).json({ error: { message: 'quota' } }) : next()));
    });
    for (let i = 0; i < 3; i++) await request(app).post('/v1/chat/completions').set('x-user-quota', 'exhausted').send({ model: 'gpt-4o' }).expect(401);
    await sleep(10);
    for (const id of [1, 2, 3]) expect(mw.health(id)).toMatchObject({ status: ChannelStatus.Enabled, coolingDown: false });
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
  });

  test('a 5xx the gateway answers itself (a route that throws) cools nothing unless countUnreported', async () => {
    for (const countUnreported of [false, true]) {
      const up = await echoingUpstream();
      const { app, mw } = gatewayApp({ channels: three(up.url), health: { cooldown: { failures: 1, durationMs: 60_000 }, countUnreported } }, (a) => {
        a.post('/v1/broken', () => {
          throw new Error('gateway bug');
        });
      });
      await request(app).post('/v1/broken').send({ model: 'gpt-4o' }).expect(500);
      await sleep(10);
      expect(mw.isCoolingDown(1)).toBe(countUnreported);
    }
  });
});

describe('a caller\'s input echoed by the upstream never disables a channel', () => {
  const keywordCases: Array<[string, Record<string, unknown>]> = [
    ['as sent', { reasoning_effort: 'Permission denied' }],
    ['in another case', { reasoning_effort: 'PERMISSION DENIED' }],
    ['with a keyword of a custom list', { reasoning_effort: 'Quota Gone' }],
  ];
  test.each(keywordCases)('reasoning_effort with a disable keyword (%s): three channels stay enabled', async (_label, body) => {
    const up = await echoingUpstream();
    const { app, mw } = gatewayApp({ channels: three(up.url), health: { autoDisable: { keywords: ['Permission denied', 'quota gone'] } } });
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o', ...body });
    expect(r.status).toBe(400); // 400 is not retried: the caller sees the upstream's answer
    await sleep(10);
    for (const id of [1, 2, 3]) expect(mw.health(id)?.status).toBe(ChannelStatus.Enabled);
    const ok = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' });
    expect(ok.status).toBe(200);
  });

  test('a JSON-escaped keyword (\\u0020, \\u0050) is recognised as the caller\'s', async () => {
    const up = await echoingUpstream();
    const { app, mw } = gatewayApp({ channels: three(up.url), health: { autoDisable: {} } });
    const raw = '{"model":"gpt-4o","reasoning_effort":"\\u0050ermission\\u0020denied"}';
    await request(app).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(400);
    await sleep(10);
    expect(mw.health(1)?.status).toBe(ChannelStatus.Enabled);
  });

  test('with retryable statuses the retry walks every channel, and none is disabled', async () => {
    // an upstream that answers 500 quoting the caller: every attempt is retried and reported
    const { url } = await listen((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        res.writeHead(500, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: `upstream could not handle: ${Buffer.concat(chunks).toString('utf8')}` } }));
      });
    });
    const { app, mw } = gatewayApp({ channels: three(url), health: { autoDisable: {} } });
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Your credit balance is too low' }] });
    expect(r.status).toBe(500);
    await sleep(10);
    for (const id of [1, 2, 3]) expect(mw.health(id)?.status).toBe(ChannelStatus.Enabled);
  });

  test('the same keyword, not sent by the caller, still disables (the rule is not switched off)', async () => {
    const { url } = await listen((_req, res) => {
      res.writeHead(403, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: { message: 'Permission denied: this organization has no access' } }));
    });
    const { app, mw } = gatewayApp({ channels: three(url).slice(0, 1), retry: { times: 0 }, health: { autoDisable: {} } });
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(403);
    await sleep(10);
    expect(mw.health(1)?.status).toBe(ChannelStatus.AutoDisabled);
  });

  test('a keyword in a header value or the query string is the caller\'s too', async () => {
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o', key: 'sk-k1-0123456789' }], logger: memoryLogger(), health: { autoDisable: {} }, retry: { times: 0 } });
    handlers.push(mw);
    const app = express();
    app.use(mw);
    app.use(async (_req: Request, res: Response) => {
      await res.locals.distribution!.retry({ status: 403, error: 'Request rejected: Operation not allowed' });
      res.status(403).end();
    });
    await request(app).post('/v1/chat/completions').set('x-note', 'operation NOT allowed').send({ model: 'gpt-4o' }).expect(403);
    await request(app).post('/v1/chat/completions?note=Operation%20not%20allowed').send({ model: 'gpt-4o' }).expect(403);
    await sleep(10);
    expect(mw.health(1)?.status).toBe(ChannelStatus.Enabled);
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(403);
    await sleep(10);
    expect(mw.health(1)?.status).toBe(ChannelStatus.AutoDisabled);
  });
});

describe('client-caused statuses never cool a channel', () => {
  test('three 1.2 MB bodies answered 413 by the upstream leave every channel serving', async () => {
    const { url } = await listen((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(413, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'Request entity too large' } }));
      });
    });
    const { app, mw } = gatewayApp({ channels: three(url), health: { cooldown: { failures: 3, durationMs: 30_000 } } });
    const big = 'x'.repeat(1_200_000);
    for (let i = 0; i < 3; i++) await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o', input: big }).expect(413);
    await sleep(10);
    for (const id of [1, 2, 3]) expect(mw.isCoolingDown(id)).toBe(false);
  });
});

describe('options', () => {
  test.each([[[500]], [[429]], [[404]], [[400, 401]]])('autoDisable.statusCodes %j is refused (only 401 and 403)', (codes) => {
    let err: unknown;
    try {
      distributor({ channels: [{ id: 1, models: 'm' }], health: { autoDisable: { statusCodes: codes } } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DistributorError);
    expect((err as DistributorError).code).toBe('ERR_DIST_INVALID_OPTIONS');
    expect((err as DistributorError).message).toMatch(/401 and 403/);
  });

  test('autoDisable.statusCodes [401, 403] and countUnreported are accepted; a non-boolean countUnreported is not', async () => {
    const mw = distributor({ channels: [{ id: 1, models: 'm' }], logger: memoryLogger(), health: { autoDisable: { statusCodes: [401, 403] }, countUnreported: true } });
    await mw.shutdown();
    expect(() => distributor({ channels: [{ id: 1, models: 'm' }], health: { countUnreported: 'yes' as unknown as boolean } })).toThrow(/countUnreported/);
  });
});

describe('nothing observers or logs get carries a channel key or a raw affinity value', () => {
  const KEY = 'sk-upstream-alpha-S3CRET';
  const SESSION = 'session-value-7c1d9e55';

  test('select hook events: no key, keyIndex kept', async () => {
    const events: unknown[] = [];
    const mw = distributor({
      channels: [{ id: 1, models: 'gpt-4o', key: [KEY, `${KEY}-2`] }, { id: 2, models: 'gpt-4o', key: `${KEY}-single`, priority: -1 }],
      logger: memoryLogger(),
      on: { select: (e) => events.push(e.channel) },
    });
    handlers.push(mw);
    const app = express();
    app.use(mw);
    app.use((_req, res) => res.json({ key: res.locals.channel?.key }));
    const r = await request(app).post('/v1/responses').send({ model: 'gpt-4o', prompt_cache_key: SESSION }).expect(200);
    expect(r.body.key).toMatch(/^sk-upstream-alpha-S3CRET/); // the relay still gets its key
    await request(app).post('/v1/responses').send({ model: 'gpt-4o', prompt_cache_key: SESSION }).expect(200); // an affinity hit
    expect(events).toHaveLength(2);
    for (const ch of events) {
      expect(ch).not.toHaveProperty('key');
      expect(ch).not.toHaveProperty('keys');
      expect(JSON.stringify(ch)).not.toContain('S3CRET');
      expect(ch).toHaveProperty('keyIndex');
    }
  });

  test('console.log / util.inspect and JSON of res.locals.distribution show no key and no affinity value', async () => {
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o', key: KEY }], logger: memoryLogger() });
    handlers.push(mw);
    const app = express();
    app.use(mw);
    app.use((_req, res) => res.json({ inspected: inspect(res.locals.distribution, { depth: 8, showHidden: false }), json: JSON.stringify(res.locals.distribution) }));
    const r = await request(app).post('/v1/responses').set('authorization', 'Bearer caller-token-5d5d5d5d').send({ model: 'gpt-4o', prompt_cache_key: SESSION }).expect(200);
    for (const text of [r.body.inspected as string, r.body.json as string]) {
      expect(text).not.toContain('S3CRET');
      expect(text).not.toContain(SESSION);
      expect(text).not.toContain('caller-token');
      expect(text).toContain('selected');
    }
  });

  // The caller chooses its affinity value; with it removed first, a value that is a piece of the
  // channel key split the key, and the rest of the key stayed readable in the 503.
  const pieces = ['sk-', 'upstream', 'alpha', 'S3CRET', '-', 'sk-upstream-alpha', 'pstream-al', `${KEY}-and-more`];
  const paths: Array<[string, number | undefined]> = [['selection', undefined], ['a specific channel (admin pin)', 1]];
  describe.each(paths)('setup errors on the %s path', (_label, specificChannelId) => {
    test.each(pieces)('name no part of the channel key when the caller\'s affinity value is %j', async (value) => {
      const log = memoryLogger();
      const fallbacks: string[] = [];
      const mw = distributor({
        channels: [{ id: 1, models: 'gpt-4o', key: KEY }],
        logger: log,
        context: () => ({ specificChannelId }),
        setup: (ch) => {
          throw new Error(`auth failed for key ${ch.key} (was ${ch.key})`);
        },
        on: { fallback: (e) => fallbacks.push(e.error) },
      });
      handlers.push(mw);
      const app = express();
      app.use(mw);
      app.use((_req, res) => res.end());
      const r = await request(app).post('/v1/responses').send({ model: 'gpt-4o', prompt_cache_key: value }).expect(503);
      const shown = [r.text, log.text(), ...fallbacks].join('\n');
      expect(shown).not.toContain('alpha-S3CRET');
      expect(shown).not.toContain('S3CRET');
      expect(shown).not.toContain('upstream-alpha');
      expect(r.body.error.message).toContain('[REDACTED]');
    });
  });
});

describe('distribution.signal', () => {
  test('a client gone while an async context was pending: the relay finds the signal aborted and calls no upstream', async () => {
    let upstreamCalls = 0;
    let seen: { aborted: boolean } | undefined;
    const mw = distributor({
      channels: [{ id: 1, models: 'gpt-4o', key: 'sk-k1-0123456789' }],
      logger: memoryLogger(),
      context: async () => {
        await sleep(80);
        return {};
      },
    });
    handlers.push(mw);
    const app = express();
    app.use(mw);
    app.use((_req, res) => {
      const d = res.locals.distribution as Distribution;
      seen = { aborted: d.signal.aborted };
      if (!d.signal.aborted) upstreamCalls++;
      res.end();
    });
    const { port } = await listen(app);
    await abandonedPost(port, '/v1/chat/completions', { model: 'gpt-4o' }, 20);
    const t0 = Date.now();
    while (!seen && Date.now() - t0 < 2000) await sleep(10);
    expect(seen).toEqual({ aborted: true });
    expect(upstreamCalls).toBe(0);
  });

  test('fires while the relay is working when the client leaves, and not for a finished response', async () => {
    const fired: string[] = [];
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o', key: 'sk-k1-0123456789' }], logger: memoryLogger() });
    handlers.push(mw);
    const app = express();
    app.use(mw);
    app.use((req, res) => {
      const d = res.locals.distribution as Distribution;
      d.signal.addEventListener('abort', () => fired.push(String(req.headers['x-n'])));
      if (req.headers['x-n'] === 'slow') return; // never answers: the client will leave
      res.json({ ok: true });
    });
    const { port } = await listen(app);
    await request(`http://127.0.0.1:${port}`).post('/v1/chat/completions').set('x-n', 'fast').send({ model: 'gpt-4o' }).expect(200);
    const req = http.request({ port, host: '127.0.0.1', method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'x-n': 'slow' } });
    req.on('error', () => undefined);
    req.end(JSON.stringify({ model: 'gpt-4o' }));
    await sleep(50);
    req.destroy();
    const t0 = Date.now();
    while (fired.length === 0 && Date.now() - t0 < 2000) await sleep(10);
    expect(fired).toEqual(['slow']);
  });
});
