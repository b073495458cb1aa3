// distribution.fail(), double reports, the budget claimed before any await, the Retry-After wait
// ending with the client, and a success resetting counted failures.
import { afterEach, describe, expect, test } from '@jest/globals';
import type { NextFunction, Request, Response } from 'express';
import request from 'supertest';
import { MemoryStore, type ChannelInput } from '../lib';
import { ruleNameOfPinKey } from '../lib/affinity/layout';
import { createApp } from './helpers/create-app';
import { abandonedPost } from './helpers/ports';

const shutdowns: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (shutdowns.length) await shutdowns.pop()!();
});

const chans = (n: number): ChannelInput[] => Array.from({ length: n }, (_, i) => ({ id: i + 1, models: 'gpt-5', key: `sk-fail-${i + 1}` }));

function app(options: Parameters<typeof createApp>[0], handler: (req: Request, res: Response, next: NextFunction) => void) {
  const t = createApp(options, { handler });
  shutdowns.push(() => t.mw.shutdown());
  return t;
}

describe('fail(): a failure that must not be retried', () => {
  test('records the attempt, feeds health and clears the pin, but picks nothing', async () => {
    const store = new MemoryStore();
    shutdowns.push(async () => store.shutdown());
    const { app: a, mw } = app({ channels: chans(2), store, health: { cooldown: { failures: 1 } }, random: () => 0 }, (req, res) => {
      const d = res.locals.distribution!;
      if (req.headers['x-cut']) {
        res.write('partial');
        void d.fail({ error: 'stream cut' }).then(() => {
          res.json === undefined; // keep the response object alive until here
          res.end();
        });
        return;
      }
      res.json({ channel: res.locals.channel!.id, attempts: d.attempts });
    });
    // pin the session to channel 1
    const first = await request(a).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 's1' }).expect(200);
    expect(first.body.channel).toBe(1);
    await new Promise((r) => setTimeout(r, 10));
    expect(await store.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 1 });
    // the pinned channel's stream is cut after the commit point
    const cut = await request(a).post('/v1/responses').set('x-cut', '1').send({ model: 'gpt-5', prompt_cache_key: 's1' });
    expect(cut.status).toBe(200); // the wire status was already sent
    await new Promise((r) => setTimeout(r, 20));
    expect(mw.isCoolingDown(1)).toBe(true); // health fed (one failure -> cooldown)
    expect(await store.countPins(ruleNameOfPinKey)).toEqual({}); // the pinned channel failed: pin cleared
    const after = await request(a).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 's1' }).expect(200);
    expect(after.body.channel).toBe(2);
  });

  test('a second report of the same attempt records nothing more', async () => {
    const { app: a } = app({ channels: chans(3), retry: { times: 0 } }, async (_req, res) => {
      const d = res.locals.distribution!;
      const r1 = await d.retry({ status: 500 });
      const r2 = await d.retry({ status: 500 });
      await d.fail({ status: 500 });
      res.status(500).json({ r1, r2, attempts: d.attempts, stopReason: d.stopReason });
    });
    const r = await request(a).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(500);
    expect(r.body.r1).toBeNull();
    expect(r.body.r2).toBeNull();
    expect(r.body.stopReason).toBe('times');
    expect(r.body.attempts).toHaveLength(1);
  });
});

describe('retry budget', () => {
  test('concurrent retries with a slow setup cannot all pass the budget check', async () => {
    let setupCalls = 0;
    const { app: a } = app({
      channels: chans(6),
      retry: { times: 2, budget: { percent: 1, minConcurrent: 1 } },
      // the first setup of each request is instant; later ones (during retry) take a while
      setup: async (_ch, req) => {
        setupCalls++;
        if ((req as Request & { _n?: number })._n === undefined) {
          (req as Request & { _n?: number })._n = 1;
          return;
        }
        await new Promise((r) => setTimeout(r, 80));
      },
    }, async (_req, res) => {
      const d = res.locals.distribution!;
      const next = await d.retry({ status: 503 });
      res.status(next ? 200 : 503).json({ next: next?.id ?? null, stopReason: d.stopReason ?? null });
    });
    const rs = await Promise.all([1, 2, 3].map(() => request(a).post('/v1/chat/completions').send({ model: 'gpt-5' })));
    const granted = rs.filter((r) => r.body.next !== null).length;
    const budget = rs.filter((r) => r.body.stopReason === 'budget').length;
    expect(granted).toBe(1);
    expect(budget).toBe(2);
    expect(setupCalls).toBeGreaterThan(3);
  });
});

describe('Retry-After wait', () => {
  test('ends when the client goes away instead of running its full length', async () => {
    let waited = -1;
    const { app: a } = app({ channels: chans(1), retry: { times: 2, maxRetryAfterMs: 5000 } }, async (_req, res) => {
      const t0 = Date.now();
      await res.locals.distribution!.retry({ status: 429, retryAfterMs: 3000 });
      waited = Date.now() - t0;
      if (!res.headersSent && res.writable) res.status(429).end();
    });
    const server = a.listen(0);
    shutdowns.push(() => new Promise((r) => server.close(() => r())));
    const port = (server.address() as import('node:net').AddressInfo).port;
    await abandonedPost(port, '/v1/chat/completions', { model: 'gpt-5' }, 150);
    const t0 = Date.now();
    while (waited < 0 && Date.now() - t0 < 4000) await new Promise((r) => setTimeout(r, 20));
    expect(waited).toBeGreaterThanOrEqual(100);
    expect(waited).toBeLessThan(1500);
  });
});

describe('health: a success resets the counted failures', () => {
  test('N failures must come in a row within the window', async () => {
    const seq: number[] = [];
    const { app: a, mw } = app({ channels: chans(1), retry: { times: 0 }, health: { cooldown: { failures: 2, windowMs: 60_000, durationMs: 60_000 }, countUnreported: true } }, (_req, res) => {
      const status = seq.shift() ?? 200;
      res.status(status).json({});
    });
    seq.push(500, 200, 500);
    for (let i = 0; i < 3; i++) await request(a).post('/v1/chat/completions').send({ model: 'gpt-5' });
    await new Promise((r) => setTimeout(r, 20));
    expect(mw.isCoolingDown(1)).toBe(false); // 500, 200, 500: the success in between reset the count
    seq.push(500);
    await request(a).post('/v1/chat/completions').send({ model: 'gpt-5' });
    await new Promise((r) => setTimeout(r, 20));
    expect(mw.isCoolingDown(1)).toBe(true); // 500, 500 in a row
  });
});
