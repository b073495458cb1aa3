// relay({ hedge: { afterMs } }) (API.md 11.5) and relay()'s latency reports (11.4), through HTTP
// with real loopback mock upstreams: a slow first attempt is raced by one more on another channel,
// the first usable answer wins, the loser is aborted and counts neither way, only the winner is
// pinned, and a hedge never starts where retry() would not allow one.
import { afterAll, afterEach, describe, expect, jest, test } from '@jest/globals';
import { request } from 'undici';
import { MemoryStore, type AffinityRule, type DistributorHooks } from '../lib';
import { ch, closeClient, gateway, mock, post, stopAll, MODEL } from './helpers/relay-kit';

afterEach(async () => {
  await stopAll();
});
afterAll(async () => {
  await closeClient();
});

const settle = (ms = 30) => new Promise((r) => setTimeout(r, ms));
const rule: AffinityRule = { name: 'sess', modelRegex: ['.'], keySources: [{ type: 'header', key: 'x-session' }] };

describe('hedging', () => {
  test('a slow first attempt is raced by a second channel after afterMs: the fast one answers, the slow one is aborted and counts neither way', async () => {
    // each mock accepts only its own channel's key (401 otherwise): the racers never share credentials
    const slow = await mock({ name: 'slow', delayMs: 600, keys: ['sk-upstream-key-1-secret'] });
    const fast = await mock({ name: 'fast', keys: ['sk-upstream-key-2-secret'] });
    const events: Parameters<NonNullable<DistributorHooks['health']>>[0][] = [];
    const g = await gateway([ch(1, slow, { priority: 10 }), ch(2, fast)], {
      health: { cooldown: { failures: 1 }, outlier: { minRequests: 1, failureRate: 0.01 } },
      on: { health: (e) => events.push(e) },
    }, { hedge: { afterMs: 60 } });
    const t0 = Date.now();
    const r = await post(g.url, { model: MODEL, messages: [] });
    const took = Date.now() - t0;
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from fast');
    expect(took).toBeLessThan(450);
    const d = g.last();
    expect(d.tried).toEqual([1, 2]);
    expect(d.attempts).toEqual([{ channelId: 1, phase: 'upstream', reason: 'hedge_lost' }]);
    expect(d.trace.join(' ')).toContain('hedge_won ch=2');
    await settle(700);
    // the loser was aborted at the upstream, and neither cooled nor ejected
    expect(slow.stats.aborted).toBe(1);
    expect(g.mw.health(1)).toMatchObject({ coolingDown: false, ejectedUntil: null, inFlight: 0 });
    expect(g.mw.health(2)).toMatchObject({ inFlight: 0 });
    expect(events).toEqual([]);
  });

  test('no hedge when the first answer comes in time (the second channel sees nothing)', async () => {
    const a = await mock({ name: 'a', delayMs: 10 });
    const b = await mock({ name: 'b' });
    const g = await gateway([ch(1, a, { priority: 10 }), ch(2, b)], {}, { hedge: { afterMs: 300 } });
    for (let i = 0; i < 5; i++) expect((await post(g.url, { model: MODEL })).status).toBe(200);
    expect(b.stats.hits).toBe(0);
    expect(g.last().trace.join(' ')).not.toContain('hedge');
  });

  test('a hedge only where retry() would allow one: retry.times 0, a named channel, a used pin with skipRetryOnFailure', async () => {
    const slow = await mock({ name: 'slow', delayMs: 250 });
    const other = await mock({ name: 'other' });
    const chans = [ch(1, slow, { priority: 10 }), ch(2, other)];
    const g0 = await gateway(chans, { retry: { times: 0 } }, { hedge: { afterMs: 30 } });
    expect((await post(g0.url, { model: MODEL })).text).toContain('Hello from slow');
    const g1 = await gateway(chans, {}, { hedge: { afterMs: 30 } });
    const named = await post(g1.url, { model: MODEL }, { 'x-test-context': JSON.stringify({ specificChannelId: 1 }) });
    expect(named.text).toContain('Hello from slow');
    const skip: AffinityRule = { ...rule, skipRetryOnFailure: true };
    const store = new MemoryStore();
    const g2 = await gateway(chans, { affinity: { rules: [skip] }, store }, { hedge: { afterMs: 30 } });
    slow.set({ delayMs: 0 });
    expect((await post(g2.url, { model: MODEL }, { 'x-session': 's1' })).text).toContain('Hello from slow'); // pins 1
    await settle();
    slow.set({ delayMs: 250 });
    const pinned = await post(g2.url, { model: MODEL }, { 'x-session': 's1' });
    expect(pinned.text).toContain('Hello from slow');
    expect(g2.last().affinity).toMatchObject({ hit: true, used: true });
    expect(other.stats.hits).toBe(0);
    await store.shutdown();
  });

  test('only the winner is pinned: a pinned slow channel loses the race and the pin moves to the winner', async () => {
    const slow = await mock({ name: 'slow' });
    const fast = await mock({ name: 'fast' });
    const store = new MemoryStore();
    const g = await gateway([ch(1, slow, { priority: 10 }), ch(2, fast)], { affinity: { rules: [rule] }, store }, { hedge: { afterMs: 80 } });
    expect((await post(g.url, { model: MODEL }, { 'x-session': 'S' })).text).toContain('Hello from slow');
    await settle();
    slow.set({ delayMs: 500 });
    const r = await post(g.url, { model: MODEL }, { 'x-session': 'S' });
    expect(r.text).toContain('Hello from fast');
    await settle();
    slow.set({ delayMs: 0 });
    const again = await post(g.url, { model: MODEL }, { 'x-session': 'S' });
    expect(again.text).toContain('Hello from fast');
    expect(g.last().affinity).toMatchObject({ hit: true, used: true });
    await store.shutdown();
  });

  test('a racer that fails (500) is recorded as its failure and the other races on and wins', async () => {
    const slow = await mock({ name: 'slow', delayMs: 200 });
    const broken = await mock({ name: 'broken', failRate: 1, failStatus: 500 });
    const g = await gateway([ch(1, slow, { priority: 10 }), ch(2, broken)], { health: { cooldown: { failures: 1 } } }, { hedge: { afterMs: 40 } });
    const r = await post(g.url, { model: MODEL });
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from slow');
    const d = g.last();
    expect(d.attempts).toEqual([{ channelId: 2, phase: 'upstream', status: 500, reason: 'upstream answered 500' }]);
    await settle();
    expect(g.mw.health(2)?.coolingDown).toBe(true); // the failure counted against the channel that failed
    expect(g.mw.health(1)?.coolingDown).toBe(false);
  });

  test('SSE streams: the winner streams from its first byte; the loser holds no slot after the race', async () => {
    const slow = await mock({ name: 'slow', delayMs: 400 });
    const fast = await mock({ name: 'fast', chunkGapMs: 5 });
    const g = await gateway([ch(1, slow, { priority: 10, limits: { maxConcurrency: 1 } }), ch(2, fast, { limits: { maxConcurrency: 1 } })], {}, { hedge: { afterMs: 50 } });
    const r = await post(g.url, { model: MODEL, stream: true });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toMatch(/text\/event-stream/);
    expect(r.text).toContain('chatcmpl-mock-fast');
    expect(r.text).not.toContain('chatcmpl-mock-slow');
    expect(r.text).toContain('[DONE]');
    await settle();
    expect(g.mw.health(1)?.inFlight).toBe(0);
    expect(g.mw.health(2)?.inFlight).toBe(0);
    // both slots are free again: the next two concurrent requests both get through
    slow.set({ delayMs: 0 });
    const both = await Promise.all([post(g.url, { model: MODEL }), post(g.url, { model: MODEL })]);
    expect(both.map((x) => x.status)).toEqual([200, 200]);
  });

  test('a client that leaves while the hedge is being set up leaves no slot and no in-flight count behind', async () => {
    const slow = await mock({ name: 'slow', delayMs: 1000 });
    const other = await mock({ name: 'other' });
    const store = new MemoryStore();
    const g = await gateway([ch(1, slow, { priority: 10, limits: { maxConcurrency: 1 } }), ch(2, other, { limits: { maxConcurrency: 1 } })], {
      store,
      // the hedge's channel takes 200 ms to set up; the client leaves in the middle of it
      setup: (c) => (c.id === 2 ? new Promise((r) => setTimeout(r, 200)) : undefined),
    }, { hedge: { afterMs: 30 } });
    const ac = new AbortController();
    const pending = request(`${g.url}/v1/chat/completions`, {
      method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: MODEL }),
    }).catch(() => undefined);
    await settle(120);
    ac.abort();
    await pending;
    await settle(300);
    expect(store.holding('lim:{1}:c')).toBe(0);
    expect(store.holding('lim:{2}:c')).toBe(0);
    expect(g.mw.health(1)?.inFlight).toBe(0);
    expect(g.mw.health(2)?.inFlight).toBe(0);
    await store.shutdown();
  });

  test('hedge options are validated', () => {
    const { relay } = jest.requireActual<typeof import('../lib/entry/relay')>('../lib/entry/relay');
    expect(() => relay({ hedge: { afterMs: 0 } })).toThrow(/hedge.afterMs/);
    expect(() => relay({ hedge: { afterMs: Number.NaN } })).toThrow(/hedge.afterMs/);
    expect(() => relay({ hedge: 5 as unknown as { afterMs: number } })).toThrow(/hedge/);
  });
});

describe('latency reports from relay()', () => {
  test('each answer that served reports its latency once: total time for JSON, first byte for streams', async () => {
    const a = await mock({ name: 'a', delayMs: 40 });
    const g = await gateway([ch(1, a)]);
    for (let i = 0; i < 3; i++) expect((await post(g.url, { model: MODEL })).status).toBe(200);
    const lat = g.mw.health(1)?.latency[MODEL];
    expect(lat?.samples).toBe(3);
    expect(lat?.avgMs).toBeGreaterThanOrEqual(35);
    expect(lat?.avgMs).toBeLessThan(400);
    // a stream: time to the first byte, not to the end (the chunks keep coming after it)
    const s = await mock({ name: 's', chunkGapMs: 60 });
    const g2 = await gateway([ch(1, s)]);
    expect((await post(g2.url, { model: MODEL, stream: true })).status).toBe(200);
    expect(g2.mw.health(1)?.latency[MODEL]?.avgMs).toBeLessThan(60);
  });
});
