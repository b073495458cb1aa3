// Channel affinity (docs/affinity.md), following new-api's channel affinity.
// Adaptations (our contract wins over new-api's behaviour):
// - store keys are `aff:<rule>:<hash>` (value hashed, caller-scoped), not
//   `new-api:channel_affinity:v1:<rule>:<group>:<raw value>`; we assert key equality/inequality
//   between requests instead of the literal key text;
// - skipRetryOnFailure applies only when the pin was used (so S30's failure on B IS retried);
// - there is no admin log: the decision is in res.locals.distribution.affinity;
// - clearOnFailure (default true) clears a pin whose channel failed with a retryable status.
import { afterAll, describe, expect, jest, test } from '@jest/globals';
import { createHash } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';
import request from 'supertest';
import {
  ChannelRegistry, ChannelStatus, DistributorError, MemoryStore, affinityFromNewApi, defaultAffinityRules, distributor,
  type AffinityRule, type ChannelInput, type DistributorHandler, type DistributorOptions,
} from '../lib';
import { matchAffinity } from '../lib/affinity/key';
import { ruleNameOfPinKey } from '../lib/affinity/layout';
import { compileRules } from '../lib/affinity/rules';
import { createApp, ctx, memoryLogger, type TestApp } from './helpers/create-app';
import { RecordingStore, settle } from './helpers/recording-store';

const made: DistributorHandler[] = [];
afterAll(async () => {
  await Promise.all(made.map((m) => m.shutdown()));
});

const A = 1;
const B = 2;
const C = 3;
/** options.random values that pick channel 1, 2 or 3 of an all-zero-weight tier of three. */
const PICK3: Record<number, number> = { 1: 0, 2: 0.5, 3: 0.9 };

interface Env {
  app: TestApp['app'];
  mw: DistributorHandler;
  store: RecordingStore;
  reg: ChannelRegistry;
  rnd: { v: number };
}

function defaultChannels(): ChannelInput[] {
  return [
    { id: A, models: 'gpt-5,gpt-4,claude-3', key: 'sk-chan-a-0000' },
    { id: B, models: 'gpt-5,gpt-4,claude-3', key: 'sk-chan-b-0000' },
    { id: C, models: 'gpt-5,gpt-4,claude-3', key: 'sk-chan-c-0000' },
  ];
}

function env(options: Partial<DistributorOptions> = {}, channels: ChannelInput[] = defaultChannels(), extra?: Parameters<typeof createApp>[1]): Env {
  const store = new RecordingStore();
  const rnd = { v: 0 };
  const reg = new ChannelRegistry(channels);
  const t = createApp({ channels: reg, store, random: () => rnd.v, ...options }, extra);
  made.push(t.mw);
  return { app: t.app, mw: t.mw, store, reg, rnd };
}

interface Opts {
  model?: string;
  status?: number;
  context?: Record<string, unknown>;
  headers?: Record<string, string>;
  /** make normal selection pick this channel (tier of three, all weight 0) */
  pick?: number;
}

/** A codex-style request: POST /v1/responses with prompt_cache_key. */
async function codex(e: Env, key: string, o: Opts = {}) {
  if (o.pick !== undefined) e.rnd.v = PICK3[o.pick];
  const rq = request(e.app).post('/v1/responses');
  if (o.context) rq.set(ctx(o.context));
  if (o.status) rq.set('x-echo-status', String(o.status));
  for (const [k, v] of Object.entries(o.headers ?? {})) rq.set(k, v);
  const r = await rq.send({ model: o.model ?? 'gpt-5', prompt_cache_key: key });
  await settle();
  return r;
}

/**
 * Channel the pin of `key` points to right now (reads the store with the key the last lookup used);
 * the stored value must be exactly the channel id in decimal.
 */
async function pinOf(e: Env, lookupIndex = -1): Promise<number | null> {
  const gets = e.store.of('getPin');
  const key = gets.at(lookupIndex)?.[0] as string;
  const value = await e.store.inner.getPin(key);
  if (value === null) return null;
  expect(value).toMatch(/^[1-9][0-9]*$/);
  return Number(value);
}

/** A relay that retries once (status from x-fail) when the current channel is the one in x-fail-on. */
function failOnce(req: Request, res: Response, _next: NextFunction): void {
  const d = res.locals.distribution!;
  const first = res.locals.channel!.id;
  const failOn = Number(req.headers['x-fail-on'] ?? 0);
  const go = async () => {
    let next: number | null = null;
    if (first === failOn) {
      const ch = await d.retry({ status: Number(req.headers['x-fail'] ?? 500) });
      next = ch?.id ?? null;
    }
    const status = Number(req.headers['x-final-status'] ?? (first === failOn && next === null ? 502 : 200));
    res.status(status).json({ first, next, channel: res.locals.channel?.id ?? null, stopReason: d.stopReason ?? null, affinity: d.affinity ?? null, tried: d.tried });
  };
  void go();
}

const noSkipCodex = (over: Partial<AffinityRule> = {}): AffinityRule => ({ ...defaultAffinityRules()[0], skipRetryOnFailure: false, ...over });

describe('S27 / S28: record on success, use on the next request', () => {
  test('S27: a miss that succeeds on A pins K -> A with the default TTL 3600 s', async () => {
    const e = env();
    const r = await codex(e, 'K27', { pick: A });
    expect(r.status).toBe(200);
    expect(r.body.distribution.affinity).toEqual({ rule: 'codex cli trace', hit: false, used: false, cleared: false });
    const sets = e.store.of('setPin');
    expect(sets).toEqual([[e.store.of('getPin')[0][0], String(A), 3_600_000]]);
    expect(await pinOf(e)).toBe(A);
  });

  test('S28: K -> A is used without random selection (random points at C)', async () => {
    const e = env();
    await codex(e, 'K28', { pick: A });
    const r = await codex(e, 'K28', { pick: C });
    expect(r.body.channel.id).toBe(A);
    expect(r.body.distribution.affinity).toEqual({ rule: 'codex cli trace', hit: true, used: true, cleared: false });
    expect(r.body.distribution.tried).toEqual([A]);
  });

  test('S28: a used pin of a skipRetryOnFailure rule stops retries (stopReason skip_rule)', async () => {
    const e = env({}, defaultChannels(), { handler: failOnce });
    await codex(e, 'K28b', { pick: A, headers: { 'x-fail-on': '99' } });
    const r = await codex(e, 'K28b', { pick: C, headers: { 'x-fail-on': String(A) } });
    expect(r.body).toMatchObject({ first: A, next: null, stopReason: 'skip_rule' });
  });

  test('S28 contrast: skipRetryOnFailure does not apply on a miss (the pin was not used) -> retried', async () => {
    const e = env({}, defaultChannels(), { handler: failOnce });
    const r = await codex(e, 'K28c', { pick: A, headers: { 'x-fail-on': String(A) } });
    expect(r.body).toMatchObject({ first: A, next: expect.any(Number), stopReason: null });
    expect(r.body.next).not.toBe(A);
  });
});

describe('S29-S31, S42: stale pins are cleared and selection runs', () => {
  test('S29: disabled pin is cleared and reselected; retryable; on success K -> B', async () => {
    const e = env({}, defaultChannels(), { handler: failOnce });
    await codex(e, 'K29', { pick: A });
    e.reg.setStatus(A, ChannelStatus.ManuallyDisabled);
    // tier is now [B, C]: random 0 -> B
    e.rnd.v = 0;
    const r = await codex(e, 'K29', { headers: { 'x-fail-on': '99' } });
    expect(r.body.channel).toBe(B);
    expect(r.body.affinity).toEqual({ rule: 'codex cli trace', hit: true, used: false, stale: 'disabled', cleared: true });
    expect(await pinOf(e)).toBe(B);
    // the request stays retryable after a stale pin: a failure on B is retried on C
    e.reg.setStatus(A, ChannelStatus.Enabled);
    e.reg.setStatus(B, ChannelStatus.ManuallyDisabled);
    const r2 = await codex(e, 'K29', { pick: A, headers: { 'x-fail-on': String(A), 'x-final-status': '500' } });
    expect(r2.body.affinity).toMatchObject({ stale: 'disabled' });
    expect(r2.body).toMatchObject({ first: A, next: C, stopReason: null });
  });

  test('S30 adapted: keepOnChannelDisabled keeps K -> A, B is selected, and a failure on B IS retried (pin not used)', async () => {
    const e = env({ affinity: { keepOnChannelDisabled: true } }, defaultChannels(), { handler: failOnce });
    await codex(e, 'K30', { pick: A, headers: { 'x-fail-on': '99' } });
    e.reg.setStatus(A, ChannelStatus.ManuallyDisabled);
    e.rnd.v = 0; // tier [B, C] -> B
    const r = await codex(e, 'K30', { headers: { 'x-fail-on': String(B), 'x-final-status': '500' } });
    expect(r.body).toMatchObject({ first: B, next: C, stopReason: null });
    expect(r.body.affinity).toEqual({ rule: 'codex cli trace', hit: true, used: false, stale: 'disabled', cleared: false });
    expect(e.store.of('clearPin')).toEqual([]);
    expect(await pinOf(e)).toBe(A);
    // once A is back, the session returns to it
    e.reg.setStatus(A, ChannelStatus.Enabled);
    const back = await codex(e, 'K30', { pick: C, headers: { 'x-fail-on': '99' } });
    expect(back.body.channel).toBe(A);
    expect(back.body.affinity).toMatchObject({ used: true });
  });

  test('S31: K -> A where A no longer serves the model: ineligible, cleared, K -> the new channel', async () => {
    const e = env({}, [
      { id: A, models: 'gpt-5' },
      { id: B, models: 'gpt-5,gpt-4' },
    ]);
    await codex(e, 'K31', { model: 'gpt-5' }); // random 0 -> A
    expect(await pinOf(e)).toBe(A);
    const r = await codex(e, 'K31', { model: 'gpt-4' });
    expect(r.body.channel.id).toBe(B);
    expect(r.body.distribution.affinity).toMatchObject({ hit: true, used: false, stale: 'ineligible', cleared: true });
    expect(await pinOf(e)).toBe(B);
    const again = await codex(e, 'K31', { model: 'gpt-5' });
    expect(again.body.channel.id).toBe(B);
    expect(again.body.distribution.affinity).toMatchObject({ used: true });
  });

  test('S42: K -> A where A was deleted: missing, cleared, normal selection', async () => {
    const e = env();
    await codex(e, 'K42', { pick: A });
    e.reg.remove(A);
    e.rnd.v = 0.9; // tier [B, C] -> C
    const r = await codex(e, 'K42');
    expect(r.status).toBe(200);
    expect(r.body.channel.id).toBe(C);
    expect(r.body.distribution.affinity).toMatchObject({ hit: true, used: false, stale: 'missing', cleared: true });
    expect(e.store.of('clearPin')).toEqual([[e.store.of('getPin')[1][0], String(A)]]);
  });
});

describe('stale reasons: missing / disabled / ineligible / cooling / setup_failed', () => {
  const cases: Array<[string, (e: Env) => Promise<void> | void]> = [
    ['missing', (e) => void e.reg.remove(A)],
    ['disabled', (e) => void e.reg.setStatus(A, ChannelStatus.AutoDisabled)],
    ['ineligible', (e) => void e.reg.upsert({ id: A, models: 'other' })],
    ['cooling', async (e) => {
      await e.store.recordFailure(A, { failures: 1, windowMs: 60_000, durationMs: 60_000 }, Date.now());
      expect(e.mw.isCoolingDown(A)).toBe(true);
    }],
    ['setup_failed', (e) => void (failSetup.add(A))],
  ];
  const failSetup = new Set<number>();
  const setup = (ch: { id: number }) => {
    if (failSetup.has(ch.id)) throw new Error(`setup of ${ch.id} failed`);
  };

  test.each(cases)('%s: reported in distribution.affinity.stale, cleared, another channel serves', async (reason, makeStale) => {
    failSetup.clear();
    const e = env({ setup });
    await codex(e, `Kstale-${reason}`, { pick: A });
    await makeStale(e);
    const r = await codex(e, `Kstale-${reason}`, { pick: A });
    expect(r.status).toBe(200);
    expect(r.body.channel.id).not.toBe(A);
    expect(r.body.distribution.affinity).toEqual({ rule: 'codex cli trace', hit: true, used: false, stale: reason, cleared: true });
    expect(e.store.of('clearPin')).toHaveLength(1);
  });

  test.each(cases)('keepOnChannelDisabled covers %s: the pin is kept (request failed, so nothing re-pins)', async (reason, makeStale) => {
    failSetup.clear();
    const e = env({ setup, affinity: { keepOnChannelDisabled: true } });
    await codex(e, `Kkeep-${reason}`, { pick: A });
    await makeStale(e);
    const r = await codex(e, `Kkeep-${reason}`, { pick: A, status: 500 });
    expect(r.status).toBe(500);
    expect(r.body.channel.id).not.toBe(A);
    expect(r.body.distribution.affinity).toEqual({ rule: 'codex cli trace', hit: true, used: false, stale: reason, cleared: false });
    expect(e.store.of('clearPin')).toEqual([]);
    expect(await pinOf(e)).toBe(A);
  });
});

describe('S32: no rule matches', () => {
  test('/v1/responses with model claude-3 (codex rule wants ^gpt-) -> no affinity, no store read', async () => {
    const e = env();
    const r = await codex(e, 'K32', { model: 'claude-3' });
    expect(r.status).toBe(200);
    expect(r.body.distribution.affinity).toBeUndefined();
    expect(e.store.calls).toEqual([]);
  });

  test('affinity.enabled false -> nothing read or written', async () => {
    const e = env({ affinity: { enabled: false } });
    await codex(e, 'K32b');
    const r = await codex(e, 'K32b');
    expect(r.body.distribution.affinity).toBeUndefined();
    expect(e.store.pinKeys()).toEqual([]);
  });
});

describe('S36: switchOnSuccess', () => {
  test('K -> A, A fails with 500 (rule without skip), the retry succeeds on B -> K -> B', async () => {
    const e = env({ affinity: { rules: [noSkipCodex()] } }, defaultChannels(), { handler: failOnce });
    await codex(e, 'K36', { pick: A, headers: { 'x-fail-on': '99' } });
    e.rnd.v = 0; // retry: tier [A(tried), B, C] -> B
    const r = await codex(e, 'K36', { headers: { 'x-fail-on': String(A) } });
    expect(r.body).toMatchObject({ first: A, next: B, channel: B });
    expect(r.status).toBe(200);
    expect(await pinOf(e)).toBe(B);
  });

  test('switchOnSuccess false (and clearOnFailure false): K stays A after the retry succeeded on B', async () => {
    const e = env({ affinity: { rules: [noSkipCodex()], switchOnSuccess: false, clearOnFailure: false } }, defaultChannels(), { handler: failOnce });
    await codex(e, 'K36b', { pick: A, headers: { 'x-fail-on': '99' } });
    e.rnd.v = 0;
    const r = await codex(e, 'K36b', { headers: { 'x-fail-on': String(A) } });
    expect(r.body).toMatchObject({ first: A, channel: B });
    expect(await pinOf(e)).toBe(A);
  });

  test('switchOnSuccess false: a miss that succeeds after a retry pins the first chosen channel', async () => {
    const e = env({ affinity: { rules: [noSkipCodex()], switchOnSuccess: false } }, defaultChannels(), { handler: failOnce });
    const r = await codex(e, 'K36c', { pick: A, headers: { 'x-fail-on': String(A) } });
    expect(r.body).toMatchObject({ first: A, channel: expect.any(Number) });
    expect(r.body.channel).not.toBe(A);
    expect(await pinOf(e)).toBe(A);
  });

  test('with the echo status: a used pin answering 500 loses the pin (clearOnFailure), the next success moves it to B', async () => {
    const e = env();
    await codex(e, 'K36d', { pick: A });
    const failed = await codex(e, 'K36d', { pick: B, status: 500 });
    expect(failed.status).toBe(500);
    expect(failed.body.channel.id).toBe(A);
    expect(await pinOf(e)).toBeNull();
    const moved = await codex(e, 'K36d', { pick: B });
    expect(moved.body.channel.id).toBe(B);
    expect(moved.body.distribution.affinity).toMatchObject({ hit: false });
    expect(await pinOf(e)).toBe(B);
    const used = await codex(e, 'K36d', { pick: C });
    expect(used.body.channel.id).toBe(B);
  });
});

describe('S37: nothing is recorded for a failed request', () => {
  test('a miss answered with 400 writes no pin', async () => {
    const e = env();
    const r = await codex(e, 'K37', { pick: A, status: 400 });
    expect(r.status).toBe(400);
    expect(e.store.of('setPin')).toEqual([]);
    const next = await codex(e, 'K37', { pick: B });
    expect(next.body.distribution.affinity).toMatchObject({ hit: false });
  });

  test('a miss answered with 500 writes no pin', async () => {
    const e = env();
    await codex(e, 'K37b', { pick: A, status: 500 });
    expect(e.store.of('setPin')).toEqual([]);
  });

  test('a used pin answered with a non-retryable 400 keeps the pin (client fault)', async () => {
    const e = env();
    await codex(e, 'K37c', { pick: A });
    await codex(e, 'K37c', { pick: B, status: 400 });
    expect(e.store.of('clearPin')).toEqual([]);
    expect(await pinOf(e)).toBe(A);
  });

  test('clearOnFailure false: a used pin answered with 500 is kept', async () => {
    const e = env({ affinity: { clearOnFailure: false } });
    await codex(e, 'K37d', { pick: A });
    await codex(e, 'K37d', { pick: B, status: 500 });
    expect(await pinOf(e)).toBe(A);
  });
});

describe('S38 / S46: key sources in order, nested path', () => {
  const claude = (e: Env, o: { header?: string; userId?: unknown; pick?: number; status?: number }) => {
    if (o.pick !== undefined) e.rnd.v = PICK3[o.pick];
    const rq = request(e.app).post('/v1/messages');
    if (o.header !== undefined) rq.set('X-Claude-Code-Session-Id', o.header);
    if (o.status) rq.set('x-echo-status', String(o.status));
    const body: Record<string, unknown> = { model: 'claude-3', messages: [] };
    if (o.userId !== undefined) body.metadata = { user_id: o.userId };
    return rq.send(body).then(async (r) => {
      await settle();
      return r;
    });
  };

  test('S38: the first source (header) wins; when it is blank the second (body) is used, giving the same key', async () => {
    const e = env();
    await claude(e, { header: 'S38', pick: A });
    expect(await pinOf(e)).toBe(A);
    const r = await claude(e, { header: '   ', userId: JSON.stringify({ session_id: 'S38' }), pick: C });
    expect(r.body.channel.id).toBe(A);
    expect(r.body.distribution.affinity).toMatchObject({ rule: 'claude cli trace', hit: true, used: true });
    const [k1, k2] = e.store.of('getPin').map((c) => c[0]);
    expect(k2).toBe(k1);
  });

  test('S46: body metadata.user_id = "{\\"session_id\\":\\"S\\"}" with no header -> key value S (device_id ignored)', async () => {
    const e = env();
    await claude(e, { userId: JSON.stringify({ device_id: 'dev-1', session_id: 'S46' }), pick: B });
    const r = await claude(e, { userId: JSON.stringify({ device_id: 'dev-2', session_id: 'S46' }), pick: C });
    expect(r.body.channel.id).toBe(B);
    expect(r.body.distribution.affinity).toMatchObject({ hit: true, used: true });
    const other = await claude(e, { userId: JSON.stringify({ device_id: 'dev-1', session_id: 'other' }), pick: C });
    expect(other.body.distribution.affinity).toMatchObject({ hit: false });
    // the header source with the same value reaches the same pin
    const viaHeader = await claude(e, { header: 'S46', pick: C });
    expect(viaHeader.body.channel.id).toBe(B);
  });

  test('S46: a user_id that is not JSON (no session_id) yields no value -> no rule decides', async () => {
    const e = env();
    const r = await claude(e, { userId: 'plain-user', pick: A });
    expect(r.body.distribution.affinity).toBeUndefined();
  });
});

describe('S39 / S40: valueRegex and "the first deciding rule is final"', () => {
  const rules: AffinityRule[] = [
    { name: 'r1', modelRegex: ['.'], keySources: [{ type: 'header', key: 'x-a' }], valueRegex: '^sess-' },
    { name: 'r2', modelRegex: ['.'], keySources: [{ type: 'header', key: 'x-b' }, { type: 'header', key: 'x-a' }] },
  ];
  const send = (e: Env, headers: Record<string, string>, pick = A) => {
    e.rnd.v = PICK3[pick];
    return request(e.app).post('/v1/chat/completions').set(headers).send({ model: 'gpt-4o' }).then(async (r) => {
      await settle();
      return r;
    });
  };
  const ch = (): ChannelInput[] => defaultChannels().map((c) => ({ ...c, models: 'gpt-4o' }));

  test('S39: valueRegex ^sess- with value abc skips r1 and the next rule decides', async () => {
    const e = env({ affinity: { rules } }, ch());
    expect((await send(e, { 'x-a': 'abc' })).body.distribution.affinity).toMatchObject({ rule: 'r2' });
    expect((await send(e, { 'x-a': 'sess-1' })).body.distribution.affinity).toMatchObject({ rule: 'r1' });
  });

  test('valueRegex is matched only against the first 1,024 characters of a long value', async () => {
    const e = env({ affinity: { rules: [{ ...rules[0], valueRegex: 'b' }, rules[1]] } }, ch());
    expect((await send(e, { 'x-a': 'a'.repeat(1500) + 'b' })).body.distribution.affinity).toMatchObject({ rule: 'r2' });
    expect((await send(e, { 'x-a': 'a'.repeat(1000) + 'b' + 'a'.repeat(500) })).body.distribution.affinity).toMatchObject({ rule: 'r1' });
  });

  test('S40: r1 misses while r2 has a pin -> the result is a miss (r1 is final)', async () => {
    const e = env({ affinity: { rules } }, ch());
    await send(e, { 'x-b': 'V2' }, B); // r2 decides, pins -> B
    expect(await pinOf(e)).toBe(B);
    const r = await send(e, { 'x-a': 'sess-9', 'x-b': 'V2' }, C);
    expect(r.body.distribution.affinity).toEqual({ rule: 'r1', hit: false, used: false, cleared: false });
    expect(r.body.channel.id).toBe(C);
  });
});

describe('S41: the auto group', () => {
  test('K -> B where B serves only g2: used with selectedGroup g2; the key is scoped by the using group "auto"', async () => {
    const failSetup = { a: true };
    const e = env({
      autoGroups: ['g1', 'g2'],
      setup: (ch) => {
        if (ch.id === A && failSetup.a) throw new Error('A down');
      },
    }, [
      { id: A, group: 'g1', models: 'gpt-5' },
      { id: B, group: 'g2', models: 'gpt-5' },
    ]);
    const first = await codex(e, 'K41', { context: { group: 'auto' } });
    expect(first.body.channel.id).toBe(B); // A failed setup, fell back to g2
    expect(await pinOf(e)).toBe(B);
    failSetup.a = false;
    const r = await codex(e, 'K41', { context: { group: 'auto' } });
    expect(r.body.channel.id).toBe(B);
    expect(r.body.distribution).toMatchObject({ group: 'auto', selectedGroup: 'g2', affinity: { hit: true, used: true } });
    // a request with the concrete group g2 uses another key (the using group is part of it)
    const direct = await codex(e, 'K41', { context: { group: 'g2' } });
    expect(direct.body.distribution.affinity).toMatchObject({ hit: false });
    const keys = e.store.of('getPin').map((c) => c[0]);
    expect(keys[2]).not.toBe(keys[1]);
  });
});

describe('key sources: header, query, context (RequestContext field, else res.locals)', () => {
  const ch = (): ChannelInput[] => defaultChannels().map((c) => ({ ...c, models: 'gpt-4o' }));
  const twice = async (e: Env, send: (pick: number) => Promise<request.Response>) => {
    await send(A);
    await settle();
    const r = await send(C);
    await settle();
    return r;
  };

  test('query source', async () => {
    const e = env({ affinity: { rules: [{ name: 'q', modelRegex: ['.'], keySources: [{ type: 'query', key: 'conv' }] }] } }, ch());
    const r = await twice(e, (p) => {
      e.rnd.v = PICK3[p];
      return request(e.app).post('/v1/chat/completions?conv=c-1').send({ model: 'gpt-4o' });
    });
    expect(r.body.channel.id).toBe(A);
    expect(r.body.distribution.affinity).toMatchObject({ rule: 'q', used: true });
  });

  test('context source reads a RequestContext field', async () => {
    const e = env({ affinity: { rules: [{ name: 'c', modelRegex: ['.'], keySources: [{ type: 'context', key: 'sessionId' }] }] } }, ch());
    const r = await twice(e, (p) => {
      e.rnd.v = PICK3[p];
      return request(e.app).post('/v1/chat/completions').set(ctx({ sessionId: 'ctx-1' })).send({ model: 'gpt-4o' });
    });
    expect(r.body.channel.id).toBe(A);
    expect(r.body.distribution.affinity).toMatchObject({ rule: 'c', used: true });
  });

  test('context source falls back to res.locals[key]', async () => {
    const e = env(
      { affinity: { rules: [{ name: 'l', modelRegex: ['.'], keySources: [{ type: 'context', key: 'conversation' }] }] } },
      ch(),
      { before: (a) => a.use((req, res, next) => { res.locals.conversation = req.headers['x-conv']; next(); }) },
    );
    const r = await twice(e, (p) => {
      e.rnd.v = PICK3[p];
      return request(e.app).post('/v1/chat/completions').set('x-conv', 'loc-1').send({ model: 'gpt-4o' });
    });
    expect(r.body.channel.id).toBe(A);
    expect(r.body.distribution.affinity).toMatchObject({ rule: 'l', used: true });
  });

  test('pathRegex and userAgentInclude gate a rule', async () => {
    const rule: AffinityRule = { name: 'ua', modelRegex: ['.'], pathRegex: ['^/v1/chat'], userAgentInclude: ['CodeX'], keySources: [{ type: 'header', key: 'x-s' }] };
    const e = env({ affinity: { rules: [rule] } }, ch());
    const hit = await request(e.app).post('/v1/chat/completions').set('x-s', 'v').set('user-agent', 'my codex/1.0').send({ model: 'gpt-4o' });
    expect(hit.body.distribution.affinity).toMatchObject({ rule: 'ua' });
    const noUa = await request(e.app).post('/v1/chat/completions').set('x-s', 'v').set('user-agent', 'curl').send({ model: 'gpt-4o' });
    expect(noUa.body.distribution.affinity).toBeUndefined();
    const otherPath = await request(e.app).post('/v1/completions').set('x-s', 'v').set('user-agent', 'codex').send({ model: 'gpt-4o' });
    expect(otherPath.body.distribution.affinity).toBeUndefined();
  });
});

describe('keys: hashed, caller-scoped', () => {
  test('the raw value never reaches the store (no key contains it)', async () => {
    const e = env();
    const raw = 'RAW-SESSION-VALUE-4242';
    await codex(e, raw, { pick: A });
    await codex(e, raw, { pick: B, context: { tokenId: 7 } });
    expect(e.store.pinKeys().length).toBeGreaterThanOrEqual(3);
    for (const k of e.store.pinKeys()) {
      expect(k).not.toContain(raw);
      expect(k).not.toContain('4242');
    }
    const inner = [...(e.store.inner as unknown as { pins: Map<string, unknown> }).pins.keys()];
    expect(inner.length).toBe(2);
    for (const k of inner) expect(k).not.toContain(raw);
    expect(await e.store.inner.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 2 });
  });

  test('two tokenIds with the same prompt_cache_key get different pins', async () => {
    const e = env();
    await codex(e, 'Kshared', { pick: A, context: { tokenId: 1 } });
    const other = await codex(e, 'Kshared', { pick: B, context: { tokenId: 2 } });
    expect(other.body.channel.id).toBe(B);
    expect(other.body.distribution.affinity).toMatchObject({ hit: false });
    const same = await codex(e, 'Kshared', { pick: C, context: { tokenId: 1 } });
    expect(same.body.channel.id).toBe(A);
    const again2 = await codex(e, 'Kshared', { pick: C, context: { tokenId: 2 } });
    expect(again2.body.channel.id).toBe(B);
    const keys = e.store.of('getPin').map((c) => c[0]);
    expect(keys[0]).not.toBe(keys[1]);
    expect(keys[2]).toBe(keys[0]);
  });

  test('userId scopes the key when there is no tokenId', async () => {
    const e = env();
    await codex(e, 'Kuser', { pick: A, context: { userId: 'u1' } });
    const other = await codex(e, 'Kuser', { pick: B, context: { userId: 'u2' } });
    expect(other.body.distribution.affinity).toMatchObject({ hit: false });
  });

  test('includeModelName puts the model in the key; without it gpt-5 and gpt-4 share the key', async () => {
    const withModel = env({ affinity: { rules: [noSkipCodex({ includeModelName: true })] } });
    await codex(withModel, 'Km', { model: 'gpt-5', pick: A });
    const r = await codex(withModel, 'Km', { model: 'gpt-4', pick: B });
    expect(r.body.distribution.affinity).toMatchObject({ hit: false });
    const without = env({ affinity: { rules: [noSkipCodex()] } });
    await codex(without, 'Km', { model: 'gpt-5', pick: A });
    const r2 = await codex(without, 'Km', { model: 'gpt-4', pick: B });
    expect(r2.body.distribution.affinity).toMatchObject({ hit: true, used: true });
  });
});

describe('keys: the SHA-256 of a length-prefixed scope (recent digests are cached, results never change)', () => {
  const sha = (text: string) => createHash('sha256').update(text).digest('base64url');
  const scoped = (...parts: string[]) => parts.map((p) => `${p.length}:${p}`).join('');

  test('the key is aff:<rule>:sha256(rule, model, group, caller, value) for short and for long (uncached) values', async () => {
    const e = env();
    const long = 'L'.repeat(700); // a scope over the cache's bound is hashed directly
    for (const [value, tokenId] of [['Kformula', 9], ['Kformula', 9], [long, 9], ['Kformula', undefined]] as const) {
      await codex(e, value, { pick: A, context: tokenId === undefined ? {} : { tokenId } });
      const key = e.store.of('getPin').at(-1)?.[0];
      expect(key).toBe(`aff:codex%20cli%20trace:${sha(scoped('codex cli trace', '', 'default', tokenId === undefined ? '' : `t:${tokenId}`, value))}`);
    }
  });

  test('two rules, the same value: each rule keeps its own key, asked in turns', () => {
    const [a, b] = compileRules([noSkipCodex({ name: 'rule a' }), noSkipCodex({ name: 'rule b', includeRuleName: false })], 3600);
    const input = {
      req: { headers: {}, query: {} } as unknown as Request, res: { locals: {} } as unknown as Response,
      model: 'gpt-5', path: '/v1/responses', group: 'default', ctx: {}, body: { prompt_cache_key: 'shared-value' },
    };
    for (let i = 0; i < 3; i++) {
      expect(matchAffinity([a], input)?.key).toBe(`aff:rule%20a:${sha(scoped('rule a', '', 'default', '', 'shared-value'))}`);
      expect(matchAffinity([b], input)?.key).toBe(`aff:_:${sha(scoped('', '', 'default', '', 'shared-value'))}`);
    }
  });

  test('after more distinct sessions than the cache holds, every key is still the same digest', () => {
    const [rule] = compileRules([noSkipCodex()], 3600);
    const key = (value: string) => matchAffinity([rule], {
      req: { headers: {}, query: {} } as unknown as Request, res: { locals: {} } as unknown as Response,
      model: 'gpt-5', path: '/v1/responses', group: 'default', ctx: { tokenId: 3 }, body: { prompt_cache_key: value },
    })?.key;
    const first = key('session-0');
    for (let i = 1; i <= 10_000; i++) expect(key(`session-${i}`)).toBe(`aff:codex%20cli%20trace:${sha(scoped('codex cli trace', '', 'default', 't:3', `session-${i}`))}`);
    expect(key('session-0')).toBe(first); // evicted long ago, derived again to the same key
    expect(first).toBe(`aff:codex%20cli%20trace:${sha(scoped('codex cli trace', '', 'default', 't:3', 'session-0'))}`);
  });
});

describe('the embedded MemoryStore is read without a promise (fast path), with the same failure rules', () => {
  test('pins work on a plain MemoryStore; a read that throws degrades to no affinity with a storeError, never a failed request', async () => {
    const store = new MemoryStore();
    const errors: Array<{ operation: string; error: Error }> = [];
    const rnd = { v: PICK3[A] };
    const logger = memoryLogger();
    const t = createApp({ channels: defaultChannels(), store, logger, random: () => rnd.v, on: { storeError: (e) => errors.push(e) } });
    made.push(t.mw);
    // spied on the prototype: an instance-level getPin would be an override, which the store
    // answers by leaving getPinSync to getPin (the promise path)
    const viaPromise = jest.spyOn(MemoryStore.prototype, 'getPin');
    const viaSync = jest.spyOn(store, 'getPinSync');
    const send = () => request(t.app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 'Kfast' });
    expect((await send()).body.channel.id).toBe(A);
    await settle();
    rnd.v = PICK3[C];
    const hit = await send();
    expect(hit.body.channel.id).toBe(A);
    expect(hit.body.distribution.affinity).toMatchObject({ hit: true, used: true });
    const pins = (store as unknown as { pins: { get: (k: string) => unknown } }).pins;
    const realGet = pins.get;
    pins.get = () => {
      throw new Error('cache broke');
    };
    try {
      const degraded = await send();
      expect(degraded.status).toBe(200);
      expect(degraded.body.channel.id).toBe(C);
      expect(degraded.body.distribution.affinity).toMatchObject({ hit: false });
      expect(errors.map((e) => [e.operation, e.error.message])).toEqual([['getPin', 'cache broke']]);
      expect(logger.text()).toContain('store error');
      expect(viaSync).toHaveBeenCalledTimes(3);
      expect(viaPromise).not.toHaveBeenCalled();
    } finally {
      pins.get = realGet;
      viaPromise.mockRestore();
    }
    store.shutdown();
  });
});

describe('hooks observe affinity decisions without the raw value', () => {
  test('affinityMiss, affinityHit, affinityStale carry rule, channel, reason and a fingerprint, never the value', async () => {
    const events: Array<[string, Record<string, unknown>]> = [];
    const rec = (name: string) => (e: object) => {
      const { req: _req, channel: _ch, ...rest } = e as Record<string, unknown>;
      events.push([name, rest]);
    };
    const raw = 'RAW-HOOK-VALUE-777';
    const e = env({ on: { affinityMiss: rec('miss'), affinityHit: rec('hit'), affinityStale: rec('stale'), select: rec('select') } });
    await codex(e, raw, { pick: A });
    await codex(e, raw, { pick: C });
    e.reg.setStatus(A, ChannelStatus.ManuallyDisabled);
    await codex(e, raw, { pick: A });
    const names = events.map(([n]) => n);
    expect(names).toEqual(['miss', 'select', 'hit', 'select', 'stale', 'select']);
    expect(events[2][1]).toMatchObject({ rule: 'codex cli trace', channelId: A, fingerprint: expect.any(String) });
    expect(events[4][1]).toMatchObject({ rule: 'codex cli trace', channelId: A, reason: 'disabled', cleared: true });
    expect(events[3][1]).toMatchObject({ reason: 'affinity' });
    expect(JSON.stringify(events)).not.toContain(raw);
  });
});

describe('TTL', () => {
  test('setPin gets ttlSeconds, else defaultTtlSeconds (ttlSeconds <= 0 means default)', async () => {
    const e1 = env({ affinity: { rules: [noSkipCodex({ ttlSeconds: 42 })] } });
    await codex(e1, 'Kt');
    expect(e1.store.of('setPin')[0][2]).toBe(42_000);
    const e2 = env({ affinity: { defaultTtlSeconds: 99, rules: [noSkipCodex({ ttlSeconds: 0 })] } });
    await codex(e2, 'Kt');
    expect(e2.store.of('setPin')[0][2]).toBe(99_000);
    const e3 = env({ affinity: { defaultTtlSeconds: 77 } });
    await codex(e3, 'Kt');
    expect(e3.store.of('setPin')[0][2]).toBe(77_000);
    // the lookup refreshes with the same TTL (sliding)
    await codex(e3, 'Kt');
    expect(e3.store.of('getPin')[1][1]).toBe(77_000);
  });

  test('a pin expires after its TTL and is refreshed by each use (sliding); only Date is faked', async () => {
    // timers, ticks and I/O stay real (supertest needs them); the clock the store reads is ours
    jest.useFakeTimers({ doNotFake: ['hrtime', 'nextTick', 'performance', 'queueMicrotask', 'requestAnimationFrame', 'cancelAnimationFrame', 'requestIdleCallback', 'cancelIdleCallback', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    try {
      const t0 = Date.now();
      const e = env({ affinity: { rules: [noSkipCodex({ ttlSeconds: 10 })] } });
      await codex(e, 'Kexp', { pick: A });
      jest.setSystemTime(t0 + 6_000);
      expect((await codex(e, 'Kexp', { pick: C })).body.channel.id).toBe(A);
      jest.setSystemTime(t0 + 12_000); // past the first TTL, within the refreshed one
      expect((await codex(e, 'Kexp', { pick: C })).body.channel.id).toBe(A);
      jest.setSystemTime(t0 + 22_500); // 10.5 s after the last use
      const r = await codex(e, 'Kexp', { pick: C });
      expect(r.body.distribution.affinity).toMatchObject({ hit: false });
      expect(r.body.channel.id).toBe(C);
    } finally {
      jest.useRealTimers();
    }
  });

  test('a pin expires in real time with a small TTL', async () => {
    const e = env({ affinity: { rules: [noSkipCodex({ ttlSeconds: 0.5 })] } });
    await codex(e, 'Kreal', { pick: A });
    expect((await codex(e, 'Kreal', { pick: C })).body.channel.id).toBe(A);
    await new Promise((r) => setTimeout(r, 1200));
    const r = await codex(e, 'Kreal', { pick: C });
    expect(r.body.distribution.affinity).toMatchObject({ hit: false });
  });
});

describe('affinityFromNewApi: the reference channel_affinity_setting JSON, pasted unchanged', () => {
  const setting = {
    enabled: true,
    switch_on_success: true,
    keep_on_channel_disabled: false,
    max_entries: 100000,
    default_ttl_seconds: 3600,
    rules: [
      {
        name: 'codex cli trace',
        model_regex: ['^gpt-.*$'],
        path_regex: ['/v1/responses'],
        user_agent_include: null,
        key_sources: [{ type: 'gjson', path: 'prompt_cache_key' }],
        value_regex: '',
        ttl_seconds: 0,
        param_override_template: { operations: [{ mode: 'pass_headers', value: ['Originator', 'Session_id', 'User-Agent'], keep_origin: true }] },
        skip_retry_on_failure: true,
        include_using_group: true,
        include_model_name: false,
        include_rule_name: true,
      },
      {
        name: 'claude cli trace',
        model_regex: ['^claude-.*$', '^gpt-.*$'],
        path_regex: ['/v1/messages'],
        user_agent_include: null,
        key_sources: [
          { type: 'request_header', key: 'X-Claude-Code-Session-Id' },
          { type: 'gjson', path: 'metadata.user_id', nested_path: 'session_id' },
        ],
        value_regex: '',
        ttl_seconds: 0,
        skip_retry_on_failure: true,
        include_using_group: true,
        include_model_name: false,
        include_rule_name: true,
      },
    ],
  };

  test('converts both default rules: the same keys and decisions as the built-in defaults', async () => {
    const opts = affinityFromNewApi(JSON.stringify(setting));
    expect(opts).toMatchObject({ enabled: true, switchOnSuccess: true, keepOnChannelDisabled: false, defaultTtlSeconds: 3600 });
    expect(opts.rules?.map((r) => r.name)).toEqual(['codex cli trace', 'claude cli trace']);
    const imported = env({ affinity: opts });
    const builtin = env();
    for (const e of [imported, builtin]) {
      await codex(e, 'Kimp', { pick: A, context: { tokenId: 3 } });
      await request(e.app).post('/v1/messages').send({ model: 'claude-3', metadata: { user_id: JSON.stringify({ session_id: 'S-imp' }) } });
      await settle();
    }
    expect(imported.store.pinKeys()).toEqual(builtin.store.pinKeys());
    expect(imported.store.of('setPin')).toEqual(builtin.store.of('setPin'));
    // skip_retry_on_failure came across: a used imported pin stops retries
    const withRelay = env({ affinity: opts }, defaultChannels(), { handler: failOnce });
    await codex(withRelay, 'Kskip', { pick: A, headers: { 'x-fail-on': '99' } });
    const r = await codex(withRelay, 'Kskip', { pick: C, headers: { 'x-fail-on': String(A) } });
    expect(r.body.stopReason).toBe('skip_rule');
  });

  test('snake_case settings and context_* / request_header sources are converted', () => {
    const opts = affinityFromNewApi({
      enabled: false,
      switch_on_success: false,
      keep_on_channel_disabled: true,
      default_ttl_seconds: 120,
      rules: [{
        name: 'ctx',
        model_regex: ['.*'],
        key_sources: [{ type: 'context_int', key: 'token_id' }, { type: 'context_string', key: 'session' }, { type: 'request_header', key: 'X-S' }],
        value_regex: '^[a-z0-9]+$',
        ttl_seconds: 30,
        skip_retry_on_failure: false,
        include_using_group: false,
        include_model_name: true,
        include_rule_name: true,
      }],
    });
    expect(opts).toMatchObject({ enabled: false, switchOnSuccess: false, keepOnChannelDisabled: true, defaultTtlSeconds: 120 });
    expect(opts.rules?.[0]).toMatchObject({
      name: 'ctx',
      keySources: [{ type: 'context', key: 'token_id' }, { type: 'context', key: 'session' }, { type: 'header', key: 'X-S' }],
      valueRegex: '^[a-z0-9]+$',
      ttlSeconds: 30,
      skipRetryOnFailure: false,
      includeModelName: true,
      includeRuleName: true,
      includeUsingGroup: false,
    });
  });

  test('a leading (?i) is converted to a case-insensitive JS regex', async () => {
    const opts = affinityFromNewApi({ rules: [{ name: 'ci', model_regex: ['(?i)^GPT-'], key_sources: [{ type: 'request_header', key: 'x-s' }] }] });
    const e = env({ affinity: opts }, defaultChannels().map((c) => ({ ...c, models: 'gpt-4o' })));
    const r = await request(e.app).post('/v1/chat/completions').set('x-s', 'v').send({ model: 'gpt-4o' });
    expect(r.body.distribution.affinity).toMatchObject({ rule: 'ci' });
  });

  test.each([['(?s)^gpt.*$'], ['^[[:alpha:]]+$'], ['^[^[:space:]]+$'], ['^[a[:digit:]]+$'], ['\\Qgpt-4.1\\E'], ['^gpt(?i)-x'], ['^\\pL+$'], ['^\\p{Greek}'], ['\\PN']])('an unconvertible Go regex %s -> ERR_DIST_INVALID_OPTIONS naming rule and pattern', (pattern) => {
    let err: unknown;
    try {
      affinityFromNewApi({ rules: [{ name: 'go only rule', model_regex: [pattern], key_sources: [{ type: 'request_header', key: 'x' }] }] });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DistributorError);
    expect((err as DistributorError).code).toBe('ERR_DIST_INVALID_OPTIONS');
    expect((err as DistributorError).message).toContain('go only rule');
    // the pattern is quoted as JSON text (backslashes escaped)
    expect((err as DistributorError).message).toContain(JSON.stringify(pattern));
  });
});

describe('invalid regexes are rejected when distributor() is created, naming the rule', () => {
  test.each<[string, Partial<AffinityRule>]>([
    ['modelRegex', { modelRegex: ['(unclosed'] }],
    ['pathRegex', { pathRegex: ['[z-a]'] }],
    ['valueRegex', { valueRegex: '*bad' }],
  ])('%s', (_f, over) => {
    const rule: AffinityRule = { name: 'my broken rule', modelRegex: ['.'], keySources: [{ type: 'header', key: 'x' }], ...over };
    let err: unknown;
    try {
      made.push(distributor({ channels: [{ id: 1, models: 'm' }], logger: memoryLogger(), affinity: { rules: [rule] } }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DistributorError);
    expect((err as DistributorError).code).toBe('ERR_DIST_INVALID_OPTIONS');
    expect((err as DistributorError).message).toContain('my broken rule');
  });
});
