// A request's lifecycle at its edges: a retry after the response finished, a client gone before
// the close listener, overlapping retry() calls, an onError that answers and throws, and the
// group an `auto` request names in its 503.
import { afterEach, describe, expect, test } from '@jest/globals';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Request, Response } from 'express';
import request from 'supertest';
import { MemoryStore, type ChannelInput, type CooldownPolicy, type DistributorHandler } from '../lib';
import { runtimeOf } from '../lib/distributor';
import { createApp } from './helpers/create-app';
import { abandonedPost } from './helpers/ports';
import { sleep } from './helpers/fake-relay';

const handlers: DistributorHandler[] = [];
const servers: http.Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  for (const h of handlers.splice(0)) await h.shutdown();
});

const chans = (n: number): ChannelInput[] =>
  Array.from({ length: n }, (_, i) => ({ id: i + 1, models: 'gpt-5', key: `sk-test-${i + 1}-abcdef`, weight: 1, priority: n - i }));

/** A store whose recordFailure answers late (a slow Redis round trip). */
class SlowFailureStore extends MemoryStore {
  override async recordFailure(channelId: number, policy: CooldownPolicy, now: number): Promise<number | null> {
    await sleep(80);
    return super.recordFailure(channelId, policy, now);
  }
}

describe('retry() after the response finished does not leak a retry-budget slot', () => {
  test('a retry whose response ended while the failure was recorded leaves the budget free', async () => {
    let first = true;
    const { app, mw } = createApp({
      channels: chans(3),
      store: new SlowFailureStore(),
      health: { cooldown: { failures: 100 } },
      retry: { times: 2, budget: { percent: 1, minConcurrent: 1 } },
    }, {
      handler: (req: Request, res: Response) => {
        const d = res.locals.distribution!;
        if (first) {
          // a relay that reports the failure but answers the client without waiting
          first = false;
          const p = d.retry({ status: 503 });
          res.status(503).json({});
          void p.then((next) => {
            (req as Request & { late?: unknown }).late = next;
          });
          return;
        }
        void d.retry({ status: 503 }).then((next) => {
          res.status(next ? 200 : 503).json({ next: next?.id ?? null, stopReason: d.stopReason ?? null });
        });
      },
    });
    handlers.push(mw);
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(503);
    await sleep(150); // the first request's retry() finishes after its response
    const rt = runtimeOf(mw)!;
    expect(rt.counters.retrying).toBe(0);
    expect(rt.counters.active).toBe(0);
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(200);
    expect(r.body.stopReason).toBeNull();
    expect(r.body.next).not.toBeNull();
  });
});

describe('a client gone before the distributor registered its close listener', () => {
  test('the request is still finalized (active count returns to 0)', async () => {
    const { app, mw } = createApp({
      channels: chans(1),
      context: async () => {
        await sleep(120);
        return {};
      },
    });
    handlers.push(mw);
    const server = app.listen(0);
    servers.push(server);
    const { port } = server.address() as AddressInfo;
    await abandonedPost(port, '/v1/chat/completions', { model: 'gpt-5' }, 40);
    await sleep(250);
    expect(runtimeOf(mw)!.counters.active).toBe(0);
  });
});

describe('review follow-ups', () => {
  test('overlapping retry() calls share one decision', async () => {
    const { createApp } = await import('./helpers/create-app');
    const request = (await import('supertest')).default;
    const { app, mw } = createApp({ channels: [{ id: 1, models: 'm' }, { id: 2, models: 'm' }, { id: 3, models: 'm' }], random: () => 0 }, {
      handler: async (_req, res) => {
        const d = res.locals.distribution!;
        const [a, b] = await Promise.all([d.retry({ status: 500 }), d.retry({ status: 500 })]);
        res.json({ a: a?.id ?? null, b: b?.id ?? null, tried: d.tried, attempts: d.attempts.length, stopReason: d.stopReason ?? null });
      },
    });
    try {
      const r = await request(app).post('/v1/chat/completions').send({ model: 'm' }).expect(200);
      expect(r.body.a).not.toBeNull();
      expect(r.body.b).toBe(r.body.a);
      expect(r.body.tried).toHaveLength(2);
      expect(r.body.attempts).toBe(1);
      expect(r.body.stopReason).toBeNull();
    } finally {
      await mw.shutdown();
    }
  });

  test('an onError that answers and then throws does not produce a second response', async () => {
    const { createApp, memoryLogger } = await import('./helpers/create-app');
    const request = (await import('supertest')).default;
    const logger = memoryLogger();
    let errorHandlerCalls = 0;
    const { app, mw } = createApp({
      channels: [{ id: 1, models: 'm' }],
      logger,
      onError: (err, _req, res) => {
        res.status(err.status).json({ mine: err.code });
        throw new Error('boom after answering');
      },
    }, {
      before: () => undefined,
    });
    app.use((_err: unknown, _req: unknown, _res: unknown, next: (e?: unknown) => void) => {
      errorHandlerCalls++;
      next();
    });
    try {
      const r = await request(app).post('/v1/chat/completions').send({ model: 'nope' }).expect(503);
      expect(r.body).toEqual({ mine: 'model_not_found' });
      expect(errorHandlerCalls).toBe(0);
      expect(logger.lines.some((l) => l.level === 'error' && l.message.includes('onError threw'))).toBe(true);
    } finally {
      await mw.shutdown();
    }
  });

  test('an auto request names the last group selection looked at', async () => {
    const { createApp, ctx } = await import('./helpers/create-app');
    const request = (await import('supertest')).default;
    const { app, mw } = createApp({
      channels: [{ id: 1, models: 'm', group: 'g1' }],
      autoGroups: ['g1', 'g2', 'g3'],
      retry: { times: 0 },
      setup: () => {
        throw new Error('no');
      },
    });
    try {
      const r = await request(app).post('/v1/chat/completions').set(ctx({ group: 'auto' })).send({ model: 'm' }).expect(503);
      // the only setup attempt ran in g1 and the bound stopped the walk there
      expect(r.body.error.message).toContain('under group auto(g1)');
    } finally {
      await mw.shutdown();
    }
  });
});
