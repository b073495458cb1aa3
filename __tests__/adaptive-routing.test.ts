// Adaptive routing and protection (issue 14, API.md 11.4) on real loopback upstreams: strategies
// (lowest-latency, least-busy, least-usage), ChannelInput.limits with the overflow queue,
// saturated pins, outlier ejection, key rotation, slot leaks, hostile callers and option
// validation. The upstreams count requests in flight themselves; nothing of the package is mocked
// and no timer is faked (the behaviour is about real time).
import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import http from 'node:http';
import type { Request, Response } from 'express';
import { MemoryStore, distributor, type DistributorHandler, type DistributorOptions } from '../lib';
import { resetValidations } from '../lib/validations';
import { memoryLogger } from './helpers/create-app';
import {
  MODEL, chan, closeAgents, gateway, post, postAndAbandon, sleep, smallRelay, stopAdaptive, until, upstream, type Upstream,
} from './helpers/adaptive-kit';

afterEach(async () => {
  await stopAdaptive();
});
afterAll(async () => {
  await closeAgents();
});

type HealthEvent = { channelId: number; event: string; until?: number; keyIndex?: number; at: number };

/** Sends `n` requests, `concurrency` at a time. */
async function burst(url: string, n: number, concurrency: number, body?: unknown) {
  const out: Array<Awaited<ReturnType<typeof post>>> = [];
  for (let i = 0; i < n; i += concurrency) {
    const batch = await Promise.all(Array.from({ length: Math.min(concurrency, n - i) }, () => post(url, body)));
    out.push(...batch);
  }
  return out;
}

/** Live concurrency holds of a channel in a MemoryStore (one-key `c` or key 0..n-1). */
function holding(store: unknown, id: number, keys = 1): number {
  const s = store as MemoryStore;
  let n = s.holding(`lim:{${id}}:c`);
  for (let k = 0; k < keys; k++) n += s.holding(`lim:{${id}}:${k}`);
  return n;
}

// ---- 1. lowest-latency ----------------------------------------------------------------------

describe('selection.strategy: lowest-latency', () => {
  test('an upstream 5x slower gets under 15 % of requests after warm-up', async () => {
    const fast = await upstream({ delayMs: 10 });
    const slow = await upstream({ delayMs: 50 });
    const gw = await gateway({ channels: [chan(1, fast), chan(2, slow)], selection: { strategy: 'lowest-latency' } });
    // warm-up: until both channels have minSamples (3) samples; a channel short of them while the
    // other has them only gets the explore share (5 %) of picks, so this can take ~60 requests
    const samples = (id: number) => gw.mw.health(id)?.latency[MODEL]?.samples ?? 0;
    for (let i = 0; i < 100 && (samples(1) < 3 || samples(2) < 3); i++) await burst(gw.url, 4, 4);
    expect(samples(1)).toBeGreaterThanOrEqual(3);
    expect(samples(2)).toBeGreaterThanOrEqual(3);
    fast.reset();
    slow.reset();
    await burst(gw.url, 60, 4);
    expect(fast.count + slow.count).toBe(60);
    expect(slow.count / 60).toBeLessThan(0.15);
    const lat1 = gw.mw.health(1)?.latency[MODEL];
    expect(lat1?.samples).toBeGreaterThanOrEqual(3);
    expect(lat1?.avgMs).toBeGreaterThanOrEqual(9);
    expect(lat1?.avgMs).toBeLessThan(45);
    const lat2 = gw.mw.health(2)?.latency[MODEL];
    if (lat2) expect(lat2.avgMs).toBeGreaterThanOrEqual(45);
  });

  test('a channel that was slow once is measured again by the explore share, and takes the traffic back when it recovers', async () => {
    const a = await upstream({ delayMs: 120 }); // slow at first (a cold start, a bad minute)
    const b = await upstream({ delayMs: 30 });
    const gw = await gateway({
      channels: [chan(1, a), chan(2, b)],
      selection: { strategy: 'lowest-latency', latency: { halfLife: 3, explore: 0.2, minSamples: 2 } },
    });
    const samples = (id: number) => gw.mw.health(id)?.latency[MODEL]?.samples ?? 0;
    for (let i = 0; i < 100 && (samples(1) < 2 || samples(2) < 2); i++) await burst(gw.url, 2, 2);
    a.delayMs = 5; // a recovers: now 6x faster than b
    for (let i = 0; i < 15; i++) await burst(gw.url, 4, 4);
    a.reset();
    b.reset();
    await burst(gw.url, 40, 4);
    // expected 32 of 40 (the explore share, 0.2 here, goes to b now); without re-measuring a would get 0
    expect(a.count).toBeGreaterThanOrEqual(24);
  });

  test('a cold first answer does not dominate: the first samples are averaged plainly, then the exponential average takes over', async () => {
    const up = await upstream();
    const gw = await gateway({ channels: [chan(1, up)], selection: { strategy: 'lowest-latency' } }, (req, res) => {
      res.locals.distribution?.reportLatency(Number(req.headers['x-lat']));
      res.json({ ok: true });
    });
    const report = (ms: number) => post(gw.url, { model: MODEL }, { 'x-lat': String(ms) });
    await report(45);
    await report(20);
    await report(20);
    const avg = () => gw.mw.health(1)?.latency[MODEL]?.avgMs as number;
    expect(avg()).toBeCloseTo(28.3, 1); // the mean of 45, 20, 20 (an EWMA from 45 would still be 44.3)
    for (let i = 0; i < 10; i++) await report(20);
    expect(avg()).toBeLessThan(22); // inside a 10 % buffer of a 20 ms channel again
  });

  test('channels within the buffer share by weight', async () => {
    const a = await upstream({ delayMs: 15 });
    const b = await upstream({ delayMs: 15 });
    const gw = await gateway({ channels: [chan(1, a), chan(2, b)], selection: { strategy: 'lowest-latency', latency: { buffer: 2, minSamples: 1, explore: 0.5 } } });
    await burst(gw.url, 10, 1);
    expect(gw.mw.health(1)?.latency[MODEL]?.samples).toBeGreaterThanOrEqual(1);
    expect(gw.mw.health(2)?.latency[MODEL]?.samples).toBeGreaterThanOrEqual(1);
    a.reset();
    b.reset();
    await burst(gw.url, 60, 3);
    // both within the (generous) buffer of the best: each gets a real share, not just explore
    expect(Math.min(a.count, b.count)).toBeGreaterThan(60 * 0.15);
  });
});

// ---- 2. least-busy --------------------------------------------------------------------------

describe('selection.strategy: least-busy', () => {
  test('in-flight counts at the upstreams stay within 1 of each other under 200 concurrent slow requests', async () => {
    const ups = await Promise.all([upstream(), upstream(), upstream(), upstream()]);
    for (const u of ups) u.hold();
    const gw = await gateway({ channels: ups.map((u, i) => chan(i + 1, u)), selection: { strategy: 'least-busy' } });
    const replies = Array.from({ length: 200 }, () => post(gw.url));
    await until(() => ups.reduce((s, u) => s + u.inFlight, 0) === 200, 10_000, 'all 200 in flight');
    const counts = ups.map((u) => u.inFlight);
    expect(Math.max(...counts) - Math.min(...counts)).toBeLessThanOrEqual(1);
    expect(ups.map((_, i) => gw.mw.health(i + 1)?.inFlight)).toEqual(counts);
    for (const u of ups) u.release();
    const done = await Promise.all(replies);
    expect(done.every((r) => r.status === 200)).toBe(true);
    await until(() => ups.every((_, i) => gw.mw.health(i + 1)?.inFlight === 0), 2000, 'in-flight back to 0');
  });

  test('weight breaks ties (all idle: the heavier channel)', async () => {
    const a = await upstream();
    const b = await upstream();
    const gw = await gateway({ channels: [chan(1, a, { weight: 0 }), chan(2, b, { weight: 5 })], selection: { strategy: 'least-busy' } });
    await burst(gw.url, 10, 1);
    expect(b.count).toBe(10);
    expect(a.count).toBe(0);
  });
});

// ---- 3. maxConcurrency ----------------------------------------------------------------------

describe('limits.maxConcurrency', () => {
  test('4 never lets the upstream see more than 4 in flight: 100 concurrent callers queue and all succeed', async () => {
    const up = await upstream({ delayMs: 15 });
    const gw = await gateway({
      channels: [chan(1, up, { limits: { maxConcurrency: 4 } })],
      selection: { overflow: { queueMs: 15_000 } },
    });
    const replies = await Promise.all(Array.from({ length: 100 }, () => post(gw.url)));
    expect(replies.map((r) => r.status)).toEqual(Array(100).fill(200));
    expect(up.count).toBe(100);
    expect(up.maxInFlight).toBeLessThanOrEqual(4);
    expect(up.maxInFlight).toBe(4);
    expect(replies.some((r) => r.json().trace.includes('queued'))).toBe(true);
    await until(() => holding(gw.mw.store, 1) === 0, 2000, 'holds released');
  });

  test('without a queue the rest get 429 channels_saturated with Retry-After', async () => {
    const up = await upstream();
    up.hold();
    const saturated: string[] = [];
    const gw = await gateway({ channels: [chan(1, up, { limits: { maxConcurrency: 4 } })], on: { saturated: (e) => void saturated.push(e.outcome) } });
    const replies = Array.from({ length: 100 }, () => post(gw.url));
    await until(() => saturated.length === 96, 10_000, '96 rejected');
    expect(up.inFlight).toBe(4);
    up.release();
    const done = await Promise.all(replies);
    const ok = done.filter((r) => r.status === 200);
    const refused = done.filter((r) => r.status === 429);
    expect(ok).toHaveLength(4);
    expect(refused).toHaveLength(96);
    for (const r of refused) {
      expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
      expect(r.json<{ error: { code: string; type: string } }>().error).toMatchObject({ code: 'channels_saturated', type: 'distributor_error' });
    }
    expect(up.maxInFlight).toBe(4);
    expect(up.count).toBe(4);
    expect(new Set(saturated)).toEqual(new Set(['rejected']));
  });

  test('a channel at its limit is skipped (attempt reason limit) for another one', async () => {
    const a = await upstream();
    const b = await upstream();
    a.hold();
    const gw = await gateway({ channels: [chan(1, a, { priority: 1, limits: { maxConcurrency: 1 } }), chan(2, b)] });
    const first = post(gw.url);
    await until(() => a.inFlight === 1);
    const r = await post(gw.url);
    expect(r.status).toBe(200);
    const body = r.json();
    expect(body.channel).toBe(2);
    // the channel was either found full by the store (a `limit` attempt) or already known full
    if (body.tried.includes(1)) expect(body.attempts).toContainEqual({ channelId: 1, phase: 'setup', reason: 'limit' });
    a.release();
    expect((await first).json().channel).toBe(1);
  });
});

// ---- 5. a full queue ------------------------------------------------------------------------

describe('selection.overflow', () => {
  test('a full queue (maxQueued) answers 429 channels_saturated with Retry-After and an OpenAI-shaped body', async () => {
    const up = await upstream();
    up.hold();
    const outcomes: string[] = [];
    const gw = await gateway({
      channels: [chan(1, up, { limits: { maxConcurrency: 1 } })],
      selection: { overflow: { queueMs: 10_000, maxQueued: 2 } },
      on: { saturated: (e) => void outcomes.push(e.outcome) },
    });
    const holder = post(gw.url);
    await until(() => up.inFlight === 1);
    const queued = [post(gw.url), post(gw.url)];
    await until(() => outcomes.length === 2, 3000, 'two queued');
    expect(outcomes).toEqual(['queued', 'queued']);
    const t0 = Date.now();
    const r = await post(gw.url);
    expect(Date.now() - t0).toBeLessThan(1000); // at once, not after queueMs
    expect(r.status).toBe(429);
    expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    expect(r.json()).toEqual({
      error: { message: expect.stringContaining('at its limits'), type: 'distributor_error', code: 'channels_saturated' },
    });
    expect(outcomes).toEqual(['queued', 'queued', 'rejected']);
    up.release();
    const rest = await Promise.all([holder, ...queued]);
    expect(rest.map((x) => x.status)).toEqual([200, 200, 200]);
    expect(up.maxInFlight).toBe(1);
  });

  test('a queued request that waits out queueMs gets 429 with Retry-After', async () => {
    const up = await upstream();
    up.hold();
    const gw = await gateway({ channels: [chan(1, up, { limits: { maxConcurrency: 1 } })], selection: { overflow: { queueMs: 150 } } });
    const holder = post(gw.url);
    await until(() => up.inFlight === 1);
    const t0 = Date.now();
    const r = await post(gw.url);
    const waited = Date.now() - t0;
    expect(r.status).toBe(429);
    expect(waited).toBeGreaterThanOrEqual(140);
    expect(waited).toBeLessThan(1500);
    expect(Number(r.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    up.release();
    expect((await holder).status).toBe(200);
  });

  test('a request that waits a long time keeps a small record: only its last look at the full channels stays', async () => {
    const up = await upstream();
    up.hold();
    const gw = await gateway({
      channels: [chan(1, up, { limits: { maxConcurrency: 1 } }), chan(2, up, { limits: { maxConcurrency: 1 } })],
      selection: { overflow: { queueMs: 10_000 } },
      traceHeader: true,
    });
    const holders = [post(gw.url, { model: MODEL }), post(gw.url, { model: MODEL })];
    await until(() => up.inFlight === 2);
    const waiter = post(gw.url, { model: MODEL });
    await sleep(1500); // the head looks again every 100-250 ms
    up.release();
    const [r] = await Promise.all([waiter, ...holders]);
    expect(r.status).toBe(200);
    const body = r.json<{ attempts: Array<{ reason?: string }>; trace: string[] }>();
    expect(body.attempts.filter((a) => a.reason === 'limit').length).toBeLessThanOrEqual(2);
    expect(body.trace.length).toBeLessThanOrEqual(5);
  });

  test('waiters are served in FIFO order', async () => {
    const up = await upstream();
    up.hold();
    let queuedCount = 0;
    const gw = await gateway({
      channels: [chan(1, up, { limits: { maxConcurrency: 1 } })],
      selection: { overflow: { queueMs: 10_000 } },
      on: { saturated: () => void queuedCount++ },
    });
    const holder = post(gw.url, { model: MODEL, n: 0 });
    await until(() => up.inFlight === 1);
    const order: number[] = [];
    const waiters: Array<Promise<unknown>> = [];
    for (let i = 1; i <= 5; i++) {
      waiters.push(post(gw.url, { model: MODEL, n: i }).then(() => order.push(i)));
      await until(() => queuedCount === i, 2000, `waiter ${i} queued`);
    }
    up.release();
    await Promise.all([holder, ...waiters]);
    expect(order).toEqual([1, 2, 3, 4, 5]);
  });
});

// ---- 6. outlier ejection --------------------------------------------------------------------

describe('health.outlier', () => {
  /** Fails 4 of every 5 requests (80 %). */
  const eightyPercent = (n: number) => (n % 5 === 4 ? 200 : 500);

  test('upstreams failing 80 % are ejected, never more than maxEjectionPercent of the group at once', async () => {
    const ups = await Promise.all([0, 1, 2, 3].map(() => upstream({ status: eightyPercent })));
    const events: HealthEvent[] = [];
    const gw = await gateway({
      channels: ups.map((u, i) => chan(i + 1, u)),
      retry: { times: 0 },
      health: { outlier: { failureRate: 0.5, minRequests: 8, windowMs: 10_000, baseEjectionMs: 5000, maxEjectionMs: 10_000, maxEjectionPercent: 50 } },
      on: { health: (e) => void events.push({ ...e, at: Date.now() }) },
    });
    let maxEjected = 0;
    for (let i = 0; i < 12; i++) {
      await burst(gw.url, 8, 4);
      const ejected = [1, 2, 3, 4].filter((id) => gw.mw.health(id)?.ejectedUntil !== null);
      maxEjected = Math.max(maxEjected, ejected.length);
    }
    const ejectedEvents = events.filter((e) => e.event === 'ejected');
    expect(ejectedEvents.length).toBe(2);
    expect(maxEjected).toBe(2);
    const ejected = [1, 2, 3, 4].filter((id) => gw.mw.health(id)?.ejectedUntil !== null);
    expect(ejected.sort()).toEqual(ejectedEvents.map((e) => e.channelId).sort());
    for (const e of ejectedEvents) {
      expect(gw.mw.health(e.channelId)?.ejectedUntil).toBe(e.until);
      expect((e.until as number) - e.at).toBeGreaterThan(4000);
      expect((e.until as number) - e.at).toBeLessThanOrEqual(5000);
    }
    // ejected channels get no more traffic while ejected
    for (const u of ups) u.reset();
    await burst(gw.url, 20, 4);
    for (const id of ejected) expect(ups[id - 1].count).toBe(0);
  });

  test('the ejection time grows on the next ejection in a row', async () => {
    const bad = await upstream({ status: () => 500 });
    const good = await upstream();
    const events: HealthEvent[] = [];
    const gw = await gateway({
      channels: [chan(1, bad, { priority: 1 }), chan(2, good)],
      retry: { times: 1 },
      health: { outlier: { failureRate: 0.5, minRequests: 3, windowMs: 10_000, baseEjectionMs: 300, maxEjectionMs: 5000, maxEjectionPercent: 50 } },
      on: { health: (e) => void events.push({ ...e, at: Date.now() }) },
    });
    const ejections = () => events.filter((e) => e.event === 'ejected' && e.channelId === 1);
    await burst(gw.url, 3, 1);
    expect(ejections()).toHaveLength(1);
    const first = ejections()[0];
    expect(gw.mw.health(1)?.ejectedUntil).toBe(first.until);
    // while ejected: channel 2 serves first
    const during = await post(gw.url);
    expect(during.json().tried).toEqual([2]);
    await until(() => gw.mw.health(1)?.ejectedUntil === null, 2000, 'first ejection over');
    await burst(gw.url, 3, 1);
    expect(ejections()).toHaveLength(2);
    const second = ejections()[1];
    const firstMs = (first.until as number) - first.at;
    const secondMs = (second.until as number) - second.at;
    expect(firstMs).toBeGreaterThan(250);
    expect(firstMs).toBeLessThanOrEqual(300);
    expect(secondMs).toBeGreaterThan(550);
    expect(secondMs).toBeLessThanOrEqual(600);
  });

  test('an ejection is shared with a second instance on the same MemoryStore', async () => {
    const bad = await upstream({ status: () => 500 });
    const good = await upstream();
    const store = new MemoryStore();
    const outlier = { failureRate: 0.5, minRequests: 3, windowMs: 10_000, baseEjectionMs: 3000, maxEjectionMs: 5000, maxEjectionPercent: 50 };
    const channels = [chan(1, bad, { priority: 1 }), chan(2, good)];
    const a = await gateway({ channels, store, retry: { times: 1 }, health: { outlier } });
    const b = await gateway({ channels, store, retry: { times: 1 }, health: { outlier }, validate: { sharedStore: false } });
    await burst(a.url, 3, 1);
    const until1 = a.mw.health(1)?.ejectedUntil;
    expect(until1).toEqual(expect.any(Number));
    await until(() => b.mw.health(1)?.ejectedUntil === until1, 2000, 'ejection seen by b');
    bad.reset();
    const r = await post(b.url);
    expect(r.json().tried).toEqual([2]);
    expect(bad.count).toBe(0);
    await store.shutdown?.();
  });
});

// ---- 7. key rotation ------------------------------------------------------------------------

describe('retry.rotateKey', () => {
  const KEYS = ['sk-multi-key-zero-aaaa', 'sk-multi-key-one-bbbb'];

  async function setup(rotateKey?: boolean) {
    const multi = await upstream({ status: (_n, key) => (key === KEYS[0] ? 429 : 200) });
    const other = await upstream();
    const events: HealthEvent[] = [];
    const gw = await gateway({
      channels: [chan(1, multi, { key: KEYS, multiKeyMode: 'polling', priority: 1 }), chan(2, other)],
      retry: rotateKey === undefined ? {} : { rotateKey },
      on: { health: (e) => void events.push({ ...e, at: Date.now() }) },
    });
    return { multi, other, events, gw };
  }

  test('a 429 on key 0 moves the next attempt to key 1 of the same channel', async () => {
    const { multi, other, events, gw } = await setup();
    const r = await post(gw.url);
    expect(r.status).toBe(200);
    const body = r.json();
    expect(multi.keys).toEqual(KEYS);
    expect(other.count).toBe(0);
    expect(body.channel).toBe(1);
    expect(body.keyIndex).toBe(1);
    expect(body.tried).toEqual([1]);
    expect(body.attempts).toEqual([{ channelId: 1, phase: 'upstream', status: 429 }]);
    expect(body.trace.some((s) => s.startsWith('rotate_key ch=1'))).toBe(true);
    expect(Object.keys(gw.mw.health(1)?.coolingKeys ?? {})).toEqual(['0']);
    expect(gw.mw.health(1)?.coolingDown).toBe(false);
    expect(events.filter((e) => e.event === 'key_cooldown')).toEqual([expect.objectContaining({ channelId: 1, keyIndex: 0 })]);
    // the cooling key is skipped by the next requests
    multi.reset();
    await burst(gw.url, 4, 1);
    expect(multi.keys).toEqual(Array(4).fill(KEYS[1]));
  });

  test('with rotateKey: false the retry goes to another channel', async () => {
    const { multi, other, events, gw } = await setup(false);
    const r = await post(gw.url);
    const body = r.json();
    expect(multi.keys).toEqual([KEYS[0]]);
    expect(other.count).toBe(1);
    expect(body.channel).toBe(2);
    expect(body.tried).toEqual([1, 2]);
    expect(gw.mw.health(1)?.coolingKeys).toEqual({});
    expect(events.filter((e) => e.event === 'key_cooldown')).toEqual([]);
  });

  test('401 rotates too; a 500 does not', async () => {
    const multi = await upstream({ status: (_n, key) => (key === KEYS[0] ? 401 : 200) });
    const other = await upstream();
    const gw = await gateway({ channels: [chan(1, multi, { key: KEYS, multiKeyMode: 'polling', priority: 1 }), chan(2, other)] });
    expect((await post(gw.url)).json()).toMatchObject({ channel: 1, keyIndex: 1, tried: [1] });
    const m2 = await upstream({ status: (_n, key) => (key === KEYS[0] ? 500 : 200) });
    const o2 = await upstream();
    const gw2 = await gateway({ channels: [chan(1, m2, { key: KEYS, multiKeyMode: 'polling', priority: 1 }), chan(2, o2)] });
    expect((await post(gw2.url)).json()).toMatchObject({ channel: 2, tried: [1, 2] });
  });
});

// ---- 8. no slot leaks -----------------------------------------------------------------------

describe('no concurrency slot leaks', () => {
  async function limited(maxConcurrency: number, extra: Partial<DistributorOptions> = {}, handler?: Parameters<typeof gateway>[1]) {
    const up = await upstream();
    const store = new MemoryStore();
    const gw = await gateway({ channels: [chan(1, up, { limits: { maxConcurrency } })], store, ...extra }, handler);
    return { up, store, gw };
  }

  /** With the upstream held, exactly `limit` of limit+1 concurrent requests get through, the last gets 429. */
  /**
   * With the upstream held, exactly `limit` of limit+1 concurrent requests reach it; the last gets
   * 429 (no queue) or waits for a slot (`queued`) and is served after them.
   */
  async function admitsUpTo(gw: { url: string }, up: Upstream, limit: number, queued = false): Promise<void> {
    up.reset();
    up.hold();
    const replies = Array.from({ length: limit }, () => post(gw.url));
    await until(() => up.inFlight === limit, 3000, `${limit} admitted`);
    if (!queued) {
      const extra = await post(gw.url);
      expect(extra.status).toBe(429);
    } else {
      replies.push(post(gw.url));
      await sleep(120); // more than the queue's poll: it would have been admitted by now
      expect(up.inFlight).toBe(limit);
    }
    up.release();
    expect((await Promise.all(replies)).map((r) => r.status)).toEqual(Array(replies.length).fill(200));
    expect(up.maxInFlight).toBe(limit);
  }

  test('clients that destroy their socket mid-request give their slots back', async () => {
    const { up, store, gw } = await limited(2);
    up.hold();
    const gone = [postAndAbandon(gw.url), postAndAbandon(gw.url)];
    await until(() => up.inFlight === 2);
    expect(holding(store, 1)).toBe(2);
    for (const g of gone) g.destroy();
    await until(() => holding(store, 1) === 0, 2000, 'slots released');
    await until(() => up.inFlight === 0, 2000, 'upstream requests aborted');
    up.release();
    await admitsUpTo(gw, up, 2);
    await until(() => holding(store, 1) === 0);
  });

  test('a client that leaves while queued takes no slot (and never reaches the upstream)', async () => {
    const { up, store, gw } = await limited(1, { selection: { overflow: { queueMs: 10_000 } } });
    up.hold();
    const holder = post(gw.url);
    await until(() => up.inFlight === 1);
    const queued = postAndAbandon(gw.url);
    await sleep(50);
    queued.destroy();
    await queued.closed;
    await sleep(50);
    up.release();
    expect((await holder).status).toBe(200);
    await sleep(150); // longer than the queue's poll: a leaked waiter would have taken the slot by now
    expect(up.count).toBe(1);
    await until(() => holding(store, 1) === 0, 2000, 'slot released');
    await admitsUpTo(gw, up, 1, true);
  });

  test('upstream 500s with retries on one channel, and a retry to another channel, release every slot', async () => {
    const bad = await upstream({ status: () => 500 });
    const good = await upstream();
    const store = new MemoryStore();
    const gw = await gateway({
      channels: [chan(1, bad, { priority: 1, limits: { maxConcurrency: 2 } }), chan(2, good, { limits: { maxConcurrency: 2 } })],
      store, retry: { times: 2 },
    });
    good.hold();
    const r = post(gw.url);
    await until(() => good.inFlight === 1);
    // the hold on channel 1 went back when the request moved on to channel 2
    expect(holding(store, 1)).toBe(0);
    expect(holding(store, 2)).toBe(1);
    good.release();
    const body = (await r).json();
    expect(body.tried).toEqual([1, 2]);
    await until(() => holding(store, 2) === 0, 2000, 'channel 2 released');
    // every attempt fails: nothing stays held either
    good.status = () => 500;
    const failed = await burst(gw.url, 6, 3);
    expect(failed.every((x) => x.status === 500)).toBe(true);
    await until(() => holding(store, 1) + holding(store, 2) === 0, 2000, 'all released');
  });

  test('a relay handler that throws releases its slot', async () => {
    const up = await upstream();
    const store = new MemoryStore();
    let throwing = true;
    const relay = smallRelay();
    const gw = await gateway({ channels: [chan(1, up, { limits: { maxConcurrency: 2 } })], store }, (req, res, next) => {
      if (throwing) throw new Error('relay bug');
      return relay(req, res).catch(next);
    });
    const replies = await burst(gw.url, 6, 3);
    expect(replies.every((x) => x.status === 500)).toBe(true);
    await until(() => holding(store, 1) === 0, 2000, 'released');
    throwing = false;
    await admitsUpTo(gw, up, 2);
  });

  test('an async relay that rejects after reaching the upstream releases its slot', async () => {
    const up = await upstream();
    const store = new MemoryStore();
    const relay = smallRelay();
    let rejecting = true;
    const gw = await gateway({ channels: [chan(1, up, { limits: { maxConcurrency: 1 } })], store }, (req: Request, res: Response, next) => {
      if (!rejecting) return relay(req, res).catch(next);
      return (async () => {
        await sleep(5);
        throw new Error('late failure');
      })().catch(next);
    });
    expect((await post(gw.url)).status).toBe(500);
    await until(() => holding(store, 1) === 0, 2000, 'released');
    rejecting = false;
    await admitsUpTo(gw, up, 1);
  });

  test('handler.shutdown() releases every slot it holds', async () => {
    const { up, store, gw } = await limited(3);
    up.hold();
    const replies = Array.from({ length: 3 }, () => post(gw.url));
    await until(() => up.inFlight === 3);
    expect(holding(store, 1)).toBe(3);
    await gw.mw.shutdown();
    expect(holding(store, 1)).toBe(0);
    up.release();
    await Promise.all(replies);
  });
});

// ---- 9. least-usage -------------------------------------------------------------------------

describe('selection.strategy: least-usage', () => {
  test('prefers the channel with the lower used share of its limits', async () => {
    const small = await upstream();
    const big = await upstream();
    const gw = await gateway({
      channels: [chan(1, small, { limits: { rpm: 10 } }), chan(2, big, { limits: { rpm: 100 } })],
      selection: { strategy: 'least-usage' },
    });
    const replies = await burst(gw.url, 22, 1);
    expect(replies.every((r) => r.status === 200)).toBe(true);
    // rpm 10 vs 100: channel 1 is the lower share only once channel 2 has 10x its count
    expect(small.count).toBeGreaterThanOrEqual(1);
    expect(small.count).toBeLessThanOrEqual(3);
    expect(big.count).toBe(22 - small.count);
  });

  test('channels without limits count as unused', async () => {
    const limited = await upstream();
    const free = await upstream();
    const gw = await gateway({
      channels: [chan(1, limited, { limits: { rpm: 1000 }, weight: 100 }), chan(2, free, { weight: 1 })],
      selection: { strategy: 'least-usage' },
    });
    await burst(gw.url, 10, 1);
    // after its first request channel 1 has a share above 0; channel 2 (no limits) stays at 0
    expect(limited.count).toBeLessThanOrEqual(1);
    expect(free.count).toBeGreaterThanOrEqual(9);
  });
});

// ---- 10. saturated pins ---------------------------------------------------------------------

describe('a pinned channel at its limit', () => {
  test('the request goes elsewhere, affinity.stale is saturated, and the pin stays', async () => {
    const pinned = await upstream();
    const other = await upstream();
    const stale: Array<{ reason: string; cleared: boolean }> = [];
    const gw = await gateway({
      channels: [chan(1, pinned, { priority: 1, limits: { maxConcurrency: 1 } }), chan(2, other)],
      affinity: { rules: [{ name: 's', modelRegex: ['.'], keySources: [{ type: 'header', key: 'x-session' }] }] },
      on: { affinityStale: (e) => void stale.push({ reason: e.reason, cleared: e.cleared }) },
    });
    const s = { 'x-session': 'sess-A' };
    const send = (headers: Record<string, string>) => post(gw.url, undefined, headers);
    const first = (await send(s)).json();
    expect(first.channel).toBe(1);
    await sleep(20); // the pin write after the response
    pinned.hold();
    const blocker = send({ 'x-session': 'sess-B' });
    await until(() => pinned.inFlight === 1);
    const r = await send(s);
    expect(r.status).toBe(200);
    const body = r.json();
    expect(body.channel).toBe(2);
    expect(body.affinity).toMatchObject({ hit: true, used: false, cleared: false, stale: 'saturated' });
    expect(body.trace.some((t) => t.startsWith('affinity:stale(saturated) ch=1'))).toBe(true);
    expect(stale).toEqual([{ reason: 'saturated', cleared: false }]);
    pinned.release();
    expect((await blocker).json().channel).toBe(1);
    await sleep(20);
    // the pin was neither cleared nor moved to channel 2: the session goes back to channel 1
    const back = (await send(s)).json();
    expect(back.channel).toBe(1);
    expect(back.affinity).toMatchObject({ hit: true, used: true });
    expect(back.affinity?.stale).toBeUndefined();
  });
});

// ---- 11. hostile callers --------------------------------------------------------------------

describe('hostile callers', () => {
  /** A request whose body the distributor does not read, claiming `content-length: claim`. */
  function claimRequest(url: string, claim: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const req = http.request(`${url}/v1/chat/completions`, {
        method: 'POST', agent: false, headers: { 'content-type': 'application/octet-stream', 'content-length': String(claim), 'x-model': MODEL },
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode as number);
        req.destroy();
      });
      req.on('error', reject);
      req.write('abc');
    });
  }

  test('a content-length claim counts against tpm at most bodyLimit / 4 tokens', async () => {
    const up = await upstream();
    const gw = await gateway({
      channels: [chan(1, up, { limits: { tpm: 3000 } })],
      bodyLimit: 4000,
      extractModel: (req) => (typeof req.headers['x-model'] === 'string' ? req.headers['x-model'] : (req.body as { model?: string } | undefined)?.model),
    }, (_req, res) => void res.status(200).json({ channel: res.locals.channel?.id }));
    expect(await claimRequest(gw.url, 1_000_000_000)).toBe(200); // counted as min(claim, bodyLimit) / 4 = 1000
    // bodies of exactly 2000 bytes (500 tokens): 4 more fit in 3000, the 5th does not
    const filler = 'x'.repeat(2000 - JSON.stringify({ model: MODEL, p: '' }).length);
    const body = JSON.stringify({ model: MODEL, p: filler });
    expect(Buffer.byteLength(body)).toBe(2000);
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await post(gw.url, body)).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
  });

  test('reportLatency ignores negative, NaN, infinite, absurd and non-number values', async () => {
    const up = await upstream();
    const relay = smallRelay({ reportLatency: false });
    const gw = await gateway({ channels: [chan(1, up)], selection: { strategy: 'lowest-latency' } }, (req: Request, res: Response, next) => {
      const d = res.locals.distribution!;
      if (req.headers['x-bad'] === 'string') d.reportLatency('5' as unknown as number); // a relay passing a header value through
      else for (const v of [-1, Number.NaN, 1e12, Infinity, -Infinity, 600_001]) d.reportLatency(v);
      d.reportLatency(42);
      d.reportLatency(1); // once per request: ignored
      return relay(req, res).catch(next);
    });
    // a string first: it must not become the average (text, then concatenated, then NaN: the
    // channel could no longer be picked by lowest-latency)
    await post(gw.url, undefined, { 'x-bad': 'string' });
    expect(gw.mw.health(1)?.latency[MODEL]?.avgMs ?? 42).toBe(42);
    await post(gw.url);
    await post(gw.url);
    const lat = gw.mw.health(1)?.latency[MODEL];
    expect(typeof lat?.avgMs).toBe('number');
    expect(lat?.avgMs).toBe(42);
    expect(lat?.samples).toBeGreaterThanOrEqual(2);
    expect(lat?.samples).toBeLessThanOrEqual(3);
    expect((await post(gw.url)).status).toBe(200);
  });

  test('reportLatency: out-of-range numbers leave no sample; the valid report of the same request counts', async () => {
    const up = await upstream();
    const relay = smallRelay({ reportLatency: false });
    const gw = await gateway({ channels: [chan(1, up)], selection: { strategy: 'lowest-latency' } }, (req: Request, res: Response, next) => {
      const d = res.locals.distribution!;
      for (const v of [-1, Number.NaN, 1e12, Infinity, -Infinity, 600_001]) d.reportLatency(v);
      d.reportLatency(42);
      d.reportLatency(1); // once per request: ignored
      return relay(req, res).catch(next);
    });
    await post(gw.url);
    expect(gw.mw.health(1)?.latency).toEqual({ [MODEL]: { avgMs: 42, samples: 1 } });
    await post(gw.url);
    expect(gw.mw.health(1)?.latency).toEqual({ [MODEL]: { avgMs: 42, samples: 2 } });
  });

  test('the 429 never echoes the caller\'s credentials or headers, and no channel key reaches hooks, logs or errors', async () => {
    const KEYS = ['sk-chan-rotating-key-zero', 'sk-chan-rotating-key-one'];
    const multi = await upstream({ status: (_n, key) => (key === KEYS[0] ? 429 : 500) });
    const limited = await upstream();
    limited.hold();
    const events: unknown[] = [];
    const record = (name: string) => (e: object) => {
      const { req: _req, ...rest } = e as { req?: unknown };
      events.push({ name, ...rest });
    };
    const gw = await gateway({
      channels: [chan(1, multi, { key: KEYS, multiKeyMode: 'polling', priority: 2 }), chan(2, limited, { priority: 1, limits: { maxConcurrency: 1 } })],
      retry: { times: 3 },
      health: { outlier: { minRequests: 1, failureRate: 0.5, baseEjectionMs: 1000 }, cooldown: { failures: 1, durationMs: 1000 } },
      on: {
        health: record('health'), retry: record('retry'), exhausted: record('exhausted'), select: record('select'), saturated: record('saturated'),
        fallback: record('fallback'), storeError: record('storeError'),
      },
    });
    // key 0: 429 (rotates), key 1: 500 -> channel 2 (held): it holds channel 2's only slot
    const first = post(gw.url);
    await until(() => limited.inFlight === 1, 3000, 'channel 2 busy');
    const secret = 'sk-caller-own-secret-123456';
    const r = await post(gw.url, undefined, { authorization: `Bearer ${secret}`, 'x-api-key': secret, 'x-custom': 'caller-header-value-xyz' });
    expect(r.status).toBe(429);
    expect(r.text).not.toContain(secret);
    expect(r.text).not.toContain('caller-header-value-xyz');
    expect(JSON.stringify(r.headers)).not.toContain(secret);
    expect(r.json<{ error: { code: string } }>().error.code).toBe('channels_saturated');
    limited.release();
    const firstBody = await first;
    expect(firstBody.json().tried).toEqual([1, 2]);
    const everything = JSON.stringify(events) + gw.logger.text() + r.text + firstBody.text;
    expect(events.length).toBeGreaterThan(3);
    for (const k of [...KEYS, 'sk-chan-2-secret-key']) expect(everything).not.toContain(k);
    expect(everything).not.toContain(secret);
  });
});

// ---- 12. option validation ------------------------------------------------------------------

describe('option validation', () => {
  const made: DistributorHandler[] = [];
  afterEach(async () => {
    await Promise.all(made.splice(0).map((m) => m.shutdown()));
    resetValidations();
  });
  const make = (options: Record<string, unknown>, logger = memoryLogger()) => {
    const mw = distributor({ channels: [{ id: 1, models: 'm' }], logger, ...options } as DistributorOptions);
    made.push(mw);
    return mw;
  };
  const invalidOptions = expect.objectContaining({ code: 'ERR_DIST_INVALID_OPTIONS' });
  const invalidChannel = expect.objectContaining({ code: 'ERR_DIST_INVALID_CHANNEL' });

  test.each([
    [{ selection: 'fast' }],
    [{ selection: { strategy: 'fastest' } }],
    [{ selection: { strategy: 'LEAST-BUSY' } }],
    [{ selection: { strategy: 1 } }],
    [{ selection: { latency: 5 } }],
    [{ selection: { latency: { halfLife: 0 } } }],
    [{ selection: { latency: { halfLife: -3 } } }],
    [{ selection: { latency: { halfLife: Number.NaN } } }],
    [{ selection: { latency: { halfLife: '50' } } }],
    [{ selection: { latency: { buffer: -0.1 } } }],
    [{ selection: { latency: { buffer: Infinity } } }],
    [{ selection: { latency: { minSamples: 0 } } }],
    [{ selection: { latency: { minSamples: 1.5 } } }],
    [{ selection: { latency: { explore: 1.5 } } }],
    [{ selection: { latency: { explore: -0.01 } } }],
    [{ selection: { overflow: [] } }],
    [{ selection: { overflow: { queueMs: -1 } } }],
    [{ selection: { overflow: { queueMs: 1.5 } } }],
    [{ selection: { overflow: { queueMs: '100' } } }],
    [{ selection: { overflow: { maxQueued: -1 } } }],
    [{ selection: { overflow: { maxQueued: Number.NaN } } }],
    [{ health: { outlier: 'on' } }],
    [{ health: { outlier: { failureRate: 0 } } }],
    [{ health: { outlier: { failureRate: 1.5 } } }],
    [{ health: { outlier: { minRequests: 0 } } }],
    [{ health: { outlier: { minRequests: 2.5 } } }],
    [{ health: { outlier: { windowMs: 0 } } }],
    [{ health: { outlier: { baseEjectionMs: -1 } } }],
    [{ health: { outlier: { maxEjectionMs: 0 } } }],
    [{ health: { outlier: { baseEjectionMs: 10_000, maxEjectionMs: 5000 } } }],
    [{ health: { outlier: { maxEjectionPercent: 101 } } }],
    [{ health: { outlier: { maxEjectionPercent: -1 } } }],
    [{ retry: { rotateKey: 'yes' } }],
    [{ retry: { rotateKey: 1 } }],
  ])('rejects %j with ERR_DIST_INVALID_OPTIONS', (options) => {
    expect(() => make(options)).toThrow(invalidOptions);
  });

  test.each([
    ['a string', 'rpm 10'],
    ['an array', [10]],
    ['rpm 0', { rpm: 0 }],
    ['rpm -1', { rpm: -1 }],
    ['rpm 1.5', { rpm: 1.5 }],
    ['rpm as a string', { rpm: '30' }],
    ['tpm NaN', { tpm: Number.NaN }],
    ['tpm Infinity', { tpm: Infinity }],
    ['maxConcurrency 0', { maxConcurrency: 0 }],
    ['maxConcurrency 2e9', { maxConcurrency: 2e9 }],
    ['an unknown limit', { rps: 5 }],
  ])('ChannelInput.limits: rejects %s with ERR_DIST_INVALID_CHANNEL', (_name, limits) => {
    expect(() => make({ channels: [{ id: 1, models: 'm', limits }] })).toThrow(invalidChannel);
  });

  test('valid values are accepted, and limits appear on the channel view', () => {
    const mw = make({
      channels: [{ id: 1, models: 'm', limits: { rpm: 30, tpm: 10_000, maxConcurrency: 4 } }],
      selection: { strategy: 'lowest-latency', latency: { halfLife: 10, buffer: 0, minSamples: 1, explore: 0 }, overflow: { queueMs: 0, maxQueued: 0 } },
      health: { outlier: { failureRate: 1, minRequests: 1, windowMs: 1, baseEjectionMs: 1, maxEjectionMs: 1, maxEjectionPercent: 0 } },
      retry: { rotateKey: false },
    });
    expect(mw.registry.get(1)?.limits).toEqual({ rpm: 30, tpm: 10_000, maxConcurrency: 4 });
    for (const s of ['weighted', 'least-busy', 'least-usage']) expect(() => make({ selection: { strategy: s } })).not.toThrow();
  });

  test('unknown nested keys warn WRN_DIST_UNKNOWN_OPTION with a suggestion', () => {
    const log = memoryLogger();
    make({
      selection: { stratgy: 'least-busy', latency: { halflife: 5 }, overflow: { queueMS: 5 } },
      health: { outlier: { failurerate: 0.5 } },
      retry: { rotateKeys: true },
    }, log);
    const warned = log.lines.filter((l) => (l.meta as { code?: string } | undefined)?.code === 'WRN_DIST_UNKNOWN_OPTION').map((l) => l.message);
    expect(warned).toHaveLength(5);
    const text = warned.join('\n');
    expect(text).toContain('unknown option "selection.stratgy"; did you mean "selection.strategy"?');
    expect(text).toContain('unknown option "selection.latency.halflife"; did you mean "selection.latency.halfLife"?');
    expect(text).toContain('unknown option "selection.overflow.queueMS"; did you mean "selection.overflow.queueMs"?');
    expect(text).toContain('unknown option "health.outlier.failurerate"; did you mean "health.outlier.failureRate"?');
    expect(text).toContain('unknown option "retry.rotateKeys"; did you mean "retry.rotateKey"?');
    expect(log.lines.every((l) => l.level === 'warn')).toBe(true);
  });
});
