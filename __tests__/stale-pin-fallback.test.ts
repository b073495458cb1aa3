// Stale pins never block fallback: the three bugs named in the review of new-api's pull request
// "fix: retry fallback for channel affinity failures" (#4053), each pinned by tests that fail on
// the buggy behaviour (docs/affinity.md):
// (1) the "cache key prefix mismatch": clearing must delete the exact key the lookup read;
// (2) the skip-retry check after a *setup* failure blocked fallback: it must not;
// (3) "duplicate channel picks consuming retries": a re-roll that repeats a tried channel must
//     neither be set up again nor cost an attempt.
import { afterAll, describe, expect, test } from '@jest/globals';
import type { NextFunction, Request, Response } from 'express';
import request from 'supertest';
import { ChannelRegistry, ChannelStatus, type ChannelInput, type DistributorHandler, type DistributorOptions } from '../lib';
import { createApp, type TestApp } from './helpers/create-app';
import { RecordingStore, settle } from './helpers/recording-store';

const made: DistributorHandler[] = [];
afterAll(async () => {
  await Promise.all(made.map((m) => m.shutdown()));
});

interface Env {
  app: TestApp['app'];
  store: RecordingStore;
  reg: ChannelRegistry;
  rnd: { v: number };
  failSetup: Set<number>;
  setupCalls: number[];
}

function env(options: Partial<DistributorOptions> = {}, channels: ChannelInput[], extra?: Parameters<typeof createApp>[1]): Env {
  const store = new RecordingStore();
  const rnd = { v: 0 };
  const reg = new ChannelRegistry(channels);
  const failSetup = new Set<number>();
  const setupCalls: number[] = [];
  const t = createApp({
    channels: reg,
    store,
    random: () => rnd.v,
    setup: (ch) => {
      setupCalls.push(ch.id);
      if (failSetup.has(ch.id)) throw new Error(`channel ${ch.id}: no usable configuration`);
    },
    ...options,
  }, extra);
  made.push(t.mw);
  return { app: t.app, store, reg, rnd, failSetup, setupCalls };
}

async function codex(e: Env, key: string, status?: number) {
  const rq = request(e.app).post('/v1/responses');
  if (status) rq.set('x-echo-status', String(status));
  const r = await rq.send({ model: 'gpt-5', prompt_cache_key: key });
  await settle();
  return r;
}

const three = (): ChannelInput[] => [
  { id: 1, models: 'gpt-5' },
  { id: 2, models: 'gpt-5' },
  { id: 3, models: 'gpt-5' },
];

describe('review bug 1: clearing uses the exact stored key (no prefix mismatch)', () => {
  test('a stale pin is cleared with exactly the key getPin read, and is really gone', async () => {
    const e = env({}, three());
    e.rnd.v = 0; // -> channel 1
    await codex(e, 'K-exact');
    const [lookupKey] = e.store.of('getPin')[0] as [string];
    expect(e.store.of('setPin')).toEqual([[lookupKey, '1', 3_600_000]]);
    e.reg.setStatus(1, ChannelStatus.ManuallyDisabled);
    const r = await codex(e, 'K-exact', 500); // failed request: nothing re-pins the key
    expect(r.body.distribution.affinity).toMatchObject({ stale: 'disabled', cleared: true });
    const gets = e.store.of('getPin');
    expect(gets[1][0]).toBe(lookupKey);
    expect(e.store.of('clearPin')).toEqual([[lookupKey, '1']]);
    expect(await e.store.inner.getPin(lookupKey)).toBeNull();
    expect(e.store.inner.pinCount).toBe(0);
  });

  test('a used pin that fails (clearOnFailure) is cleared with the same key, and is really gone', async () => {
    const e = env({}, three());
    await codex(e, 'K-fail');
    const [lookupKey] = e.store.of('getPin')[0] as [string];
    const r = await codex(e, 'K-fail', 503);
    expect(r.body.distribution.affinity).toMatchObject({ used: true });
    expect(e.store.of('clearPin')).toEqual([[lookupKey, '1']]);
    expect(e.store.inner.pinCount).toBe(0);
  });

  test('compare-and-delete: a key re-pinned by another instance meanwhile is not deleted', async () => {
    const e = env({}, three());
    await codex(e, 'K-race'); // -> 1
    e.reg.setStatus(1, ChannelStatus.ManuallyDisabled);
    // another instance re-pins the key to 3 right after our lookup read "1"
    e.store.afterGetPin = async (key, value) => {
      if (value === '1') await e.store.inner.setPin(key, '3', 60_000);
    };
    const r = await codex(e, 'K-race', 500);
    const [key] = e.store.of('getPin')[1] as [string];
    expect(e.store.of('clearPin')).toEqual([[key, '1']]);
    expect(r.body.distribution.affinity).toMatchObject({ stale: 'disabled', cleared: false });
    expect(await e.store.inner.getPin(key)).toBe('3');
  });
});

describe('review bug 2: a setup failure of the pinned channel falls back despite skipRetryOnFailure', () => {
  test('default codex rule (skipRetryOnFailure true): pinned channel fails setup -> 200 on another channel', async () => {
    const e = env({}, three());
    await codex(e, 'K-setup'); // -> 1
    e.failSetup.add(1);
    e.rnd.v = 0.99; // fallback pick -> 3
    const r = await codex(e, 'K-setup');
    expect(r.status).toBe(200);
    expect(r.body.channel.id).toBe(3);
    expect(r.body.distribution.affinity).toEqual({ rule: 'codex cli trace', hit: true, used: false, stale: 'setup_failed', cleared: true });
    expect(r.body.distribution.attempts).toEqual([{ channelId: 1, phase: 'setup', reason: 'channel 1: no usable configuration' }]);
    expect(r.body.distribution.tried).toEqual([1, 3]);
    expect(r.body.distribution.stopReason).toBeUndefined();
    // and the key now points to the channel that served
    expect(await e.store.inner.getPin(e.store.of('getPin')[1][0] as string)).toBe('3');
  });

  test('the failed pinned setup does not count: with retry.times 0 one other channel is still tried', async () => {
    const e = env({ retry: { times: 0 } }, three());
    await codex(e, 'K-setup0');
    e.failSetup.add(1);
    const r = await codex(e, 'K-setup0');
    expect(r.status).toBe(200);
    expect(r.body.distribution.tried).toEqual([1, 2]);
  });
});

describe('review bug 3: duplicate picks do not consume attempts', () => {
  const channels = (): ChannelInput[] => [
    { id: 11, models: 'gpt-5' }, // fails setup; options.random 0 always lands on it first
    { id: 12, models: 'gpt-5' }, // works
    { id: 13, models: 'gpt-5' }, // fails setup
  ];

  test('retry.times 1, random fixed at 0 (a naive re-roll repeats 11): succeeds on 12, no duplicates', async () => {
    const e = env({ retry: { times: 1 } }, channels());
    e.failSetup.add(11).add(13);
    const r = await request(e.app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(200);
    expect(r.body.channel.id).toBe(12);
    expect(r.body.distribution.tried).toEqual([11, 12]);
    expect(r.body.distribution.attempts).toEqual([{ channelId: 11, phase: 'setup', reason: expect.any(String) }]);
    expect(e.setupCalls).toEqual([11, 12]);
  });

  test('retry.times 1 with the pin on 13 failing setup too: 13 does not count, then 11 and 12 -> success', async () => {
    const e = env({ retry: { times: 1 } }, channels());
    e.rnd.v = 0.9; // -> 13
    await codex(e, 'K-dup');
    e.failSetup.add(11).add(13);
    e.rnd.v = 0;
    e.setupCalls.length = 0;
    const r = await codex(e, 'K-dup');
    expect(r.status).toBe(200);
    expect(r.body.channel.id).toBe(12);
    const d = r.body.distribution;
    expect(d.tried).toEqual([13, 11, 12]);
    expect(new Set(d.tried).size).toBe(d.tried.length);
    expect(d.attempts.map((a: { channelId: number; phase: string }) => [a.channelId, a.phase])).toEqual([[13, 'setup'], [11, 'setup']]);
    expect(e.setupCalls).toEqual([13, 11, 12]);
  });

  test('setup failures during a relay retry neither repeat a channel nor use the upstream budget', async () => {
    const relay = (_req: Request, res: Response, _next: NextFunction) => {
      const d = res.locals.distribution!;
      const first = res.locals.channel!.id;
      void d.retry({ status: 500 }).then((next) => res.json({ first, next: next?.id ?? null, tried: d.tried, attempts: d.attempts, stopReason: d.stopReason ?? null }));
    };
    const e = env({ retry: { times: 1 } }, [{ id: 10, models: 'gpt-5', priority: 5 }, ...channels()], { handler: relay });
    e.failSetup.add(11).add(13);
    const r = await request(e.app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(200);
    expect(r.body).toMatchObject({ first: 10, next: 12, stopReason: null, tried: [10, 11, 12] });
    expect(r.body.attempts.map((a: { channelId: number; phase: string }) => [a.channelId, a.phase])).toEqual([[10, 'upstream'], [11, 'setup']]);
  });
});
