// Selection (docs/channels-and-selection.md), following new-api's tiered weighted pick.
// Adaptations: weights are proportional inside a tier and all-zero tiers get equal chances
// (the reference's x100 smoothing gives the same proportions); tried channels are excluded, so a
// lone channel is not re-picked on retry (S19); 503 messages carry no "(distributor) (request id)".
import { describe, expect, test } from '@jest/globals';
import type { NextFunction, Request, Response } from 'express';
import request from 'supertest';
import { MemoryStore, type ChannelInput } from '../lib';
import { ctx, type TestApp, trackedApps } from './helpers/create-app';

const app = trackedApps();

/** A random source walking an even grid of n points over [0, 1): exact proportions over n calls. */
function grid(n: number): () => number {
  let i = 0;
  return () => ((i++ % n) + 0.5) / n;
}

async function counts(a: TestApp['app'], n: number, model = 'gpt-4o', headers: Record<string, string> = {}): Promise<Record<number, number>> {
  const out: Record<number, number> = {};
  const server = a.listen(0);
  try {
    for (let i = 0; i < n; i++) {
      const r = await request(server).post('/v1/chat/completions').set(headers).send({ model }).expect(200);
      out[r.body.channel.id] = (out[r.body.channel.id] ?? 0) + 1;
    }
  } finally {
    server.close();
  }
  return out;
}

/** Retries until retry() says no; reports the channels used. */
function retryAll(req: Request, res: Response, _next: NextFunction): void {
  const d = res.locals.distribution!;
  const used = [res.locals.channel!.id];
  const loop = async () => {
    for (;;) {
      const next = await d.retry({ status: 500 });
      if (!next) break;
      used.push(next.id);
    }
    res.status(502).json({ used, tried: d.tried, stopReason: d.stopReason, attempts: d.attempts });
  };
  void loop();
}

const chat = (a: TestApp['app'], model = 'gpt-4o') => request(a).post('/v1/chat/completions').send({ model });

describe('S9: no channel -> 503 model_not_found naming the model and the group', () => {
  test('message "No available channel for model gpt-x under group default"', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o' }] });
    const r = await chat(a, 'gpt-x').expect(503);
    expect(r.body).toEqual({ error: { message: 'No available channel for model gpt-x under group default', type: 'distributor_error', code: 'model_not_found' } });
  });

  test('the group named is the using group', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o' }] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'vip' })).send({ model: 'gpt-4o' }).expect(503);
    expect(r.body.error.message).toBe('No available channel for model gpt-4o under group vip');
  });
});

describe('S15: the highest priority tier first', () => {
  test('A(p=10), B(p=5) -> always A', async () => {
    const { app: a } = app({ channels: [{ id: 2, models: 'gpt-4o', priority: 5, weight: 100 }, { id: 1, models: 'gpt-4o', priority: 10 }] });
    expect(await counts(a, 30)).toEqual({ 1: 30 });
  });

  test('a lower tier is used when the higher tier fails setup (restart strategy)', async () => {
    const { app: a } = app({
      channels: [{ id: 1, models: 'gpt-4o', priority: 10 }, { id: 2, models: 'gpt-4o', priority: 5 }],
      setup: (ch) => {
        if (ch.id === 1) throw new Error('nope');
      },
    });
    const r = await chat(a).expect(200);
    expect(r.body.channel.id).toBe(2);
    expect(r.body.distribution.tried).toEqual([1, 2]);
  });
});

describe('S16: all weights 0 -> equal chances (reference smoothing)', () => {
  test('A(p=10,w=0), B(p=10,w=0) -> 50/50 over an even random grid', async () => {
    const n = 200;
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', priority: 10 }, { id: 2, models: 'gpt-4o', priority: 10 }], random: grid(n) });
    const c = await counts(a, n);
    expect(Math.abs(c[1] - n / 2)).toBeLessThanOrEqual(1);
    expect(Math.abs(c[2] - n / 2)).toBeLessThanOrEqual(1);
  });
});

describe('S17: a weight-0 channel in a mixed tier is never picked', () => {
  test('A(p=10,w=0), B(p=10,w=5) -> always B', async () => {
    const n = 100;
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', priority: 10, weight: 0 }, { id: 2, models: 'gpt-4o', priority: 10, weight: 5 }], random: grid(n) });
    expect(await counts(a, n)).toEqual({ 2: n });
  });

  test('...but it is still picked when the weighted channel was already tried (setup failure)', async () => {
    const { app: a } = app({
      channels: [{ id: 1, models: 'gpt-4o', weight: 0 }, { id: 2, models: 'gpt-4o', weight: 5 }],
      setup: (ch) => {
        if (ch.id === 2) throw new Error('down');
      },
    });
    const r = await chat(a).expect(200);
    expect(r.body.distribution.tried).toEqual([2, 1]);
  });
});

describe('S18: weights are proportional', () => {
  test('A(w=30), B(w=10) -> 75% / 25% over an even random grid', async () => {
    const n = 200;
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', weight: 30 }, { id: 2, models: 'gpt-4o', weight: 10 }], random: grid(n) });
    const c = await counts(a, n);
    expect(Math.abs(c[1] - 150)).toBeLessThanOrEqual(1);
    expect(Math.abs(c[2] - 50)).toBeLessThanOrEqual(1);
  });

  test('A(w=30), B(w=10) with Math.random: within a wide (>6 sigma) bound of 75%', async () => {
    const n = 300;
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', weight: 30 }, { id: 2, models: 'gpt-4o', weight: 10 }] });
    const c = await counts(a, n);
    // expected 225, sigma = sqrt(300 * .75 * .25) = 7.5
    expect(c[1]).toBeGreaterThan(180);
    expect(c[1]).toBeLessThan(270);
  });

  test('three channels 1:2:7 over an even grid', async () => {
    const n = 100;
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', weight: 1 }, { id: 2, models: 'gpt-4o', weight: 2 }, { id: 3, models: 'gpt-4o', weight: 7 }], random: grid(n) });
    const c = await counts(a, n);
    expect(Math.abs(c[1] - 10)).toBeLessThanOrEqual(1);
    expect(Math.abs(c[2] - 20)).toBeLessThanOrEqual(1);
    expect(Math.abs(c[3] - 70)).toBeLessThanOrEqual(1);
  });
});

describe('S19: a single channel', () => {
  test('A(p=1) alone is always picked; adapted: a retry never repeats it (stopReason no_channel)', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', priority: 1 }], retry: { times: 3 } }, { handler: retryAll });
    const r = await chat(a).expect(502);
    expect(r.body.used).toEqual([1]);
    expect(r.body.stopReason).toBe('no_channel');
  });
});

describe('exclusion of tried ids', () => {
  test('setup fallback never picks a tried channel, even when options.random always points at it', async () => {
    const setups: number[] = [];
    const { app: a } = app({
      channels: [{ id: 1, models: 'gpt-4o' }, { id: 2, models: 'gpt-4o' }, { id: 3, models: 'gpt-4o' }],
      random: () => 0,
      setup: (ch) => {
        setups.push(ch.id);
        if (ch.id !== 3) throw new Error('fail');
      },
    });
    const r = await chat(a).expect(200);
    expect(r.body.channel.id).toBe(3);
    expect(setups).toEqual([1, 2, 3]);
    expect(r.body.distribution.tried).toEqual([1, 2, 3]);
  });

  test('relay retries never repeat a tried channel and stop when none is left', async () => {
    const { app: a } = app({
      channels: [{ id: 1, models: 'gpt-4o', priority: 2 }, { id: 2, models: 'gpt-4o', priority: 2 }, { id: 3, models: 'gpt-4o' }],
      random: () => 0,
      retry: { times: 10 },
    }, { handler: retryAll });
    const r = await chat(a).expect(502);
    expect(r.body.used).toEqual([1, 2, 3]);
    expect(new Set(r.body.tried).size).toBe(r.body.tried.length);
    expect(r.body.stopReason).toBe('no_channel');
  });

  test('a cooling channel is skipped by selection', async () => {
    const store = new MemoryStore();
    const { app: a, mw } = app({ channels: [{ id: 1, models: 'gpt-4o', priority: 10 }, { id: 2, models: 'gpt-4o' }], store });
    expect((await chat(a).expect(200)).body.channel.id).toBe(1);
    await store.recordFailure(1, { failures: 1, windowMs: 60_000, durationMs: 60_000 }, Date.now());
    expect(mw.isCoolingDown(1)).toBe(true);
    expect((await chat(a).expect(200)).body.channel.id).toBe(2);
    store.shutdown();
  });
});

describe('S24 / S25: the auto group', () => {
  const channels: ChannelInput[] = [
    { id: 1, group: 'g1', models: 'only-g1,both' },
    { id: 2, group: 'g2', models: 'gpt-4o,both' },
  ];

  test('S24: autoGroups [g1,g2], g1 has no channel for the model -> B in g2, selectedGroup g2', async () => {
    const { app: a } = app({ channels, autoGroups: ['g1', 'g2'], usableGroups: () => ['g1', 'g2'] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto', userGroup: 'default' })).send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.channel.id).toBe(2);
    expect(r.body.distribution).toMatchObject({ group: 'auto', selectedGroup: 'g2' });
  });

  test('auto groups are walked in order (g1 first when it serves the model)', async () => {
    const { app: a } = app({ channels, autoGroups: ['g1', 'g2'] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto' })).send({ model: 'both' }).expect(200);
    expect(r.body.channel.id).toBe(1);
    expect(r.body.distribution.selectedGroup).toBe('g1');
  });

  test('usableGroups(userGroup) filters autoGroups', async () => {
    const { app: a } = app({ channels, autoGroups: ['g1', 'g2'], usableGroups: (ug) => (ug === 'poor' ? ['g2'] : ['g1', 'g2']) });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto', userGroup: 'poor' })).send({ model: 'both' }).expect(200);
    expect(r.body.channel.id).toBe(2);
    const r2 = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto', userGroup: 'poor' })).send({ model: 'only-g1' }).expect(503);
    expect(r2.body.error.message).toBe('No available channel for model only-g1 under group auto(g2)');
  });

  test('auto 503 names the last group tried: auto(<last group>)', async () => {
    const { app: a } = app({ channels, autoGroups: ['g1', 'g2'] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto' })).send({ model: 'gpt-x' }).expect(503);
    expect(r.body.error).toEqual({ message: 'No available channel for model gpt-x under group auto(g2)', type: 'distributor_error', code: 'model_not_found' });
  });

  test('S25: auto with no auto groups at all -> 503 model_not_found ("auto groups is not enabled")', async () => {
    const { app: a } = app({ channels, autoGroups: [] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto' })).send({ model: 'gpt-4o' }).expect(503);
    expect(r.body.error.code).toBe('model_not_found');
    expect(r.body.error.message).toContain('auto groups is not enabled');
  });

  test('S25 adapted: auto with no usable auto group -> 503 model_not_found', async () => {
    const { app: a } = app({ channels, autoGroups: ['g1', 'g2'], usableGroups: () => ['vip'] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'auto', userGroup: 'x' })).send({ model: 'gpt-4o' }).expect(503);
    expect(r.body.error.code).toBe('model_not_found');
  });
});
