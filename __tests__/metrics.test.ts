// distributorMetrics(): prom-client metrics fed by the hooks, asserted on the exposition text
// after real requests.
import { afterAll, describe, expect, jest, test } from '@jest/globals';
import { Registry, register as globalRegister } from 'prom-client';
import request from 'supertest';
import { ChannelRegistry, ChannelStatus, MemoryStore, type DistributorHooks, type Store } from '../lib';
import { distributorMetrics, mergeHooks } from '../lib/entry/metrics';
import { createApp } from './helpers/create-app';
import { sample } from './helpers/prometheus';

const rule = { name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'header' as const, key: 'x-session' }], includeRuleName: true };
const tick = () => new Promise((r) => setTimeout(r, 5));


const shutdowns: Array<() => Promise<void>> = [];
afterAll(async () => {
  await Promise.all(shutdowns.map((s) => s()));
});

describe('metrics after real requests', () => {
  const registry = new Registry();
  const metrics = distributorMetrics({ registry });
  const channels = new ChannelRegistry([
    { id: 1, models: 'gpt-4o', priority: 10, key: 'sk-one-secret' },
    { id: 2, models: 'gpt-4o', priority: 5, key: 'sk-two-secret' },
    { id: 3, models: 'gpt-4o', priority: 0 },
  ]);
  const { app, mw } = createApp({
    channels,
    affinity: { rules: [rule] },
    on: metrics.hooks,
    health: { cooldown: { failures: 1, durationMs: 60_000 } },
    setup: (ch, req) => {
      if (ch.id === 2 && req.headers['x-fail-setup']) throw new Error('setup boom');
    },
  }, {
    handler: async (req, res) => {
      const d = res.locals.distribution;
      if (d && req.headers['x-upstream'] === '429') {
        const next = await d.retry({ status: 429 });
        res.status(next ? 200 : 429).json({ id: next?.id ?? null });
        return;
      }
      res.json({ id: res.locals.channel?.id ?? null });
    },
  });
  shutdowns.push(() => mw.shutdown());
  const post = (session: string, headers: Record<string, string> = {}) =>
    request(app).post('/v1/chat/completions').set({ 'x-session': session, ...headers }).send({ model: 'gpt-4o' });

  test('selection, affinity miss / hit / stale / moved, retries, cooldown, setup fallback, latency', async () => {
    expect((await post('s-1').expect(200)).body).toEqual({ id: 1 }); // miss -> select ch 1, pinned
    await tick();
    expect((await post('s-1').expect(200)).body).toEqual({ id: 1 }); // hit
    await tick();
    channels.setStatus(1, ChannelStatus.ManuallyDisabled);
    expect((await post('s-1').expect(200)).body).toEqual({ id: 2 }); // stale(disabled), cleared -> ch 2: moved
    await tick();
    expect((await post('s-2', { 'x-fail-setup': '1' }).expect(200)).body).toEqual({ id: 3 }); // ch 2 setup fails -> ch 3
    await tick();
    expect((await post('s-3', { 'x-upstream': '429' }).expect(200)).body).toEqual({ id: 3 }); // ch 2 429 (cooldown) -> retry ch 3
    await tick();

    const text = await registry.metrics();
    expect(sample(text, 'distributor_selections_total', { channel: '1', reason: 'select' })).toBe(1);
    expect(sample(text, 'distributor_selections_total', { channel: '1', reason: 'affinity' })).toBe(1);
    expect(sample(text, 'distributor_selections_total', { channel: '2', reason: 'select' })).toBe(2);
    expect(sample(text, 'distributor_selections_total', { channel: '3', reason: 'fallback' })).toBe(1);
    expect(sample(text, 'distributor_selections_total', { channel: '3', reason: 'retry' })).toBe(1);
    expect(sample(text, 'distributor_affinity_total', { rule: 'sess', result: 'miss' })).toBe(3);
    expect(sample(text, 'distributor_affinity_total', { rule: 'sess', result: 'hit' })).toBe(1);
    expect(sample(text, 'distributor_affinity_total', { rule: 'sess', result: 'stale_cleared' })).toBe(1);
    expect(sample(text, 'distributor_affinity_total', { rule: 'sess', result: 'moved' })).toBe(1);
    expect(sample(text, 'distributor_affinity_stale_total', { rule: 'sess', reason: 'disabled' })).toBe(1);
    expect(sample(text, 'distributor_setup_fallbacks_total', { channel: '2' })).toBe(1);
    expect(sample(text, 'distributor_retries_total', { status: '429' })).toBe(1);
    expect(sample(text, 'distributor_health_events_total', { channel: '2', event: 'cooldown' })).toBe(1);
    // One latency observation per decision (retries are not decisions).
    expect(sample(text, 'distributor_decision_duration_seconds_count', { reason: 'select' })).toBe(3);
    expect(sample(text, 'distributor_decision_duration_seconds_count', { reason: 'affinity' })).toBe(1);
    expect(sample(text, 'distributor_decision_duration_seconds_count', { reason: 'fallback' })).toBe(1);
    expect(sample(text, 'distributor_decision_duration_seconds_count', { reason: 'retry' })).toBeUndefined();
    expect(sample(text, 'distributor_decision_duration_seconds_bucket', { reason: 'select', le: '+Inf' })).toBe(3);
    expect(sample(text, 'distributor_decision_duration_seconds_sum', { reason: 'select' })).toBeGreaterThan(0);
    // Low cardinality: no session values, keys or fingerprints in any label.
    expect(text).not.toMatch(/s-1|s-2|s-3|sk-|fingerprint/);
    const allowed = ['channel', 'event', 'le', 'operation', 'reason', 'rule', 'result', 'status'];
    const labelNames = new Set([...text.matchAll(/[{,](\w+)="/g)].map((m) => m[1]));
    expect([...labelNames].filter((l) => !allowed.includes(l))).toEqual([]);
  });

  test('exhausted requests, by reason', async () => {
    const before = sample(await registry.metrics(), 'distributor_exhausted_total', { reason: 'no_channel' }) ?? 0;
    // The only channel fails upstream: no channel is left to retry on.
    const only = createApp({ channels: [{ id: 7, models: 'gpt-4o' }], on: metrics.hooks, affinity: { enabled: false } }, {
      handler: async (_req, res) => {
        const next = await res.locals.distribution?.retry({ status: 503 });
        res.status(next ? 200 : 503).json({ id: next?.id ?? null });
      },
    });
    shutdowns.push(() => only.mw.shutdown());
    await request(only.app).post('/').send({ model: 'gpt-4o' }).expect(503);
    const text = await registry.metrics();
    expect(sample(text, 'distributor_exhausted_total', { reason: 'no_channel' })).toBe(before + 1);
    expect(sample(text, 'distributor_retries_total', { status: '503' })).toBeUndefined();
  });
});

describe('distributor_tokens_total', () => {
  test('fed by usage reports: rule (empty without one), channel, kind and affinity, served on /metrics', async () => {
    const registry = new Registry();
    const metrics = distributorMetrics({ registry });
    const { app, mw } = createApp({
      channels: [{ id: 1, models: 'gpt-4o', priority: 10 }, { id: 2, models: 'gpt-4o' }],
      affinity: { rules: [rule] },
      on: metrics.hooks,
    }, {
      before: (a) => a.get('/metrics', (_req, res, next) => {
        registry.metrics().then((text) => res.type(registry.contentType).send(text), next);
      }),
      handler: (req, res) => {
        const u = req.headers['x-usage'];
        if (typeof u === 'string') res.locals.distribution?.reportUsage(JSON.parse(u));
        res.json({ id: res.locals.channel?.id ?? null });
      },
    });
    shutdowns.push(() => mw.shutdown());
    const send = (headers: Record<string, string>) => request(app).post('/v1/chat/completions').set(headers).send({ model: 'gpt-4o' }).expect(200);
    await send({ 'x-session': 'tok-1', 'x-usage': JSON.stringify({ inputTokens: 100, cachedTokens: 0, outputTokens: 5 }) }); // miss
    await tick();
    await send({ 'x-session': 'tok-1', 'x-usage': JSON.stringify({ inputTokens: 100, cachedTokens: 90, outputTokens: 7, cacheWriteTokens: 3 }) }); // hit
    await tick();
    await send({ 'x-session': 'tok-1', 'x-usage': JSON.stringify({ inputTokens: 50, cachedTokens: 45 }) }); // hit
    await send({ 'x-usage': JSON.stringify({ inputTokens: 10, outputTokens: 1 }) }); // no rule
    // garbage counts from custom code: cleaned (negative / NaN -> 0), never a crash or a negative counter
    await send({ 'x-usage': JSON.stringify({ inputTokens: -5, outputTokens: 'NaN' }) });
    await send({}); // no report at all

    const r = await request(app).get('/metrics').expect(200);
    const text = r.text;
    const tok = (labels: Record<string, string>) => sample(text, 'distributor_tokens_total', labels);
    expect(tok({ rule: 'sess', channel: '1', kind: 'input', affinity: 'miss' })).toBe(100);
    expect(tok({ rule: 'sess', channel: '1', kind: 'cached', affinity: 'miss' })).toBe(0);
    expect(tok({ rule: 'sess', channel: '1', kind: 'output', affinity: 'miss' })).toBe(5);
    expect(tok({ rule: 'sess', channel: '1', kind: 'input', affinity: 'hit' })).toBe(150);
    expect(tok({ rule: 'sess', channel: '1', kind: 'cached', affinity: 'hit' })).toBe(135);
    expect(tok({ rule: 'sess', channel: '1', kind: 'output', affinity: 'hit' })).toBe(7);
    expect(tok({ rule: 'sess', channel: '1', kind: 'cache_write', affinity: 'hit' })).toBe(3);
    expect(tok({ rule: 'sess', channel: '1', kind: 'cache_write', affinity: 'miss' })).toBeUndefined(); // never stated
    expect(tok({ rule: '', channel: '1', kind: 'input', affinity: 'none' })).toBe(10);
    expect(tok({ rule: '', channel: '1', kind: 'output', affinity: 'none' })).toBe(1);
    expect(text).toMatch(/^# HELP distributor_tokens_total /m);
    expect(text).not.toMatch(/distributor_tokens_total\{[^}]*\} (-|NaN)/);
    expect(text).not.toContain('tok-1');
  });
});

describe('store errors', () => {
  test('counted by operation', async () => {
    const registry = new Registry();
    const metrics = distributorMetrics({ registry, prefix: 'gw_' });
    const store = new MemoryStore();
    const failing: Store = Object.assign(Object.create(store) as Store, {
      getPin: () => Promise.reject(new Error('redis down')),
    });
    const { app, mw } = createApp({ channels: [{ id: 1, models: 'gpt-4o' }], store: failing, affinity: { rules: [rule] }, on: metrics.hooks });
    shutdowns.push(async () => {
      await mw.shutdown();
      store.shutdown();
    });
    await request(app).post('/').set('x-session', 'a').send({ model: 'gpt-4o' }).expect(200);
    await request(app).post('/').set('x-session', 'b').send({ model: 'gpt-4o' }).expect(200);
    const text = await registry.metrics();
    expect(sample(text, 'gw_store_errors_total', { operation: 'getPin' })).toBe(2);
    expect(sample(text, 'gw_selections_total', { channel: '1', reason: 'select' })).toBe(2);
    expect(text).not.toContain('distributor_');
  });
});

describe('setup and composition', () => {
  test('two metric sets on one registry share the metrics instead of throwing', async () => {
    const registry = new Registry();
    const a = distributorMetrics({ registry });
    const b = distributorMetrics({ registry });
    const req = {} as never;
    a.hooks.fallback?.({ req, channelId: 4, error: 'x' });
    b.hooks.fallback?.({ req, channelId: 4, error: 'x' });
    expect(sample(await registry.metrics(), 'distributor_setup_fallbacks_total', { channel: '4' })).toBe(2);
  });

  test("defaults to prom-client's global registry", async () => {
    const m = distributorMetrics({ prefix: 'ecd_global_test_' });
    try {
      expect(m.registry).toBe(globalRegister);
      m.hooks.exhausted?.({ req: {} as never, reason: 'times', tried: [1, 2] });
      expect(sample(await globalRegister.metrics(), 'ecd_global_test_exhausted_total', { reason: 'times' })).toBe(1);
    } finally {
      globalRegister.clear();
    }
  });

  test('merge(on) feeds both the metrics and the user hooks', async () => {
    const registry = new Registry();
    const metrics = distributorMetrics({ registry });
    const seen: number[] = [];
    const { app, mw } = createApp({ channels: [{ id: 5, models: 'm' }], on: metrics.merge({ select: (e) => seen.push(e.channel.id) }) });
    shutdowns.push(() => mw.shutdown());
    await request(app).post('/').send({ model: 'm' }).expect(200);
    expect(seen).toEqual([5]);
    expect(sample(await registry.metrics(), 'distributor_selections_total', { channel: '5', reason: 'select' })).toBe(1);
  });

  test('mergeHooks: a throwing hook does not stop the others, and its error is reported', () => {
    const calls: string[] = [];
    const a: DistributorHooks = { retry: () => { calls.push('a'); throw new Error('a failed'); } };
    const b: DistributorHooks = { retry: () => { calls.push('b'); }, exhausted: () => { calls.push('b-ex'); } };
    const merged = mergeHooks(a, undefined, b);
    const e = { req: {} as never, from: 1, to: 2, attempt: 1 };
    expect(() => merged.retry?.(e)).toThrow('a failed');
    expect(calls).toEqual(['a', 'b']);
    merged.exhausted?.({ req: {} as never, reason: 'times', tried: [] });
    expect(calls).toEqual(['a', 'b', 'b-ex']);
  });

  test('an invalid prefix is refused', () => {
    expect(() => distributorMetrics({ registry: new Registry(), prefix: 'bad-prefix' })).toThrow(expect.objectContaining({ code: 'ERR_DIST_INVALID_OPTIONS' }));
  });

  test('without prom-client installed: a clear ERR_DIST_MISSING_PEER error', () => {
    jest.isolateModules(() => {
      jest.doMock('prom-client', () => {
        const e = new Error("Cannot find module 'prom-client' from 'lib/metrics.ts'") as NodeJS.ErrnoException;
        e.code = 'MODULE_NOT_FOUND';
        throw e;
      });
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const { distributorMetrics: fresh } = require('../lib/metrics') as typeof import('../lib/metrics');
      expect(() => fresh()).toThrow(expect.objectContaining({ code: 'ERR_DIST_MISSING_PEER', message: expect.stringContaining('npm install prom-client') }));
    });
    jest.dontMock('prom-client');
  });
});
