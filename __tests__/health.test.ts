// Channel health through the public API, over HTTP: cooldowns, auto-disable (status and keywords,
// autoBan, multi-key), re-enable, and health shared by distributors on one MemoryStore
// (docs/retry-and-health.md; new-api's auto-disable where the docs say we follow it).
import { afterEach, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { ChannelRegistry, ChannelStatus, MemoryStore, type AffinityRule, type ChannelInput, type DistributorHandler, type DistributorOptions, type DistributorHooks } from '../lib';
import { createApp, ctx } from './helpers/create-app';
import { FakeUpstreams, fakeRelay, settle, sleep, type Outcome, type RelayOptions } from './helpers/fake-relay';

const mws: DistributorHandler[] = [];
const stores: MemoryStore[] = [];
afterEach(async () => {
  for (const mw of mws.splice(0)) await mw.shutdown();
  for (const s of stores.splice(0)) s.shutdown();
});

const ch = (id: number, priority = 0, extra: Partial<ChannelInput> = {}): ChannelInput => ({
  id, models: 'gpt-4o', priority, key: `sk-key-${id}`, ...extra,
});

/** Short real durations (no fake timers: they can hang supertest); long enough for a slow shared machine. */
const COOL_MS = 400;
const WINDOW_MS = 300;

type Opts = Partial<DistributorOptions> & Pick<DistributorOptions, 'channels'>;

function build(options: Opts, relay: RelayOptions = {}) {
  const up = new FakeUpstreams();
  const events: Array<Parameters<NonNullable<DistributorHooks['health']>>[0]> = [];
  const { app, mw } = createApp(
    { random: () => 0, on: { health: (e) => events.push(e) }, ...options },
    { handler: fakeRelay(up, relay) },
  );
  mws.push(mw);
  const post = (headers: Record<string, string> = {}) =>
    request(app).post('/v1/chat/completions').set(headers).send({ model: 'gpt-4o' });
  return { app, mw, up, post, events, registry: mw.registry };
}

/** Both relay styles: one that reports failures through retry(), one that only answers the status. */
const relays: Array<[string, RelayOptions]> = [['retry() relay', {}], ['relay without retry()', { callRetry: false }]];

describe('cooldown', () => {
  test('cooldown {} defaults: 3 failures -> a 30 s cooldown; the cooling channel is skipped by selection', async () => {
    const { post, up, mw, events } = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: {} } });
    up.always(1, 500);
    for (let i = 0; i < 2; i++) {
      expect((await post().expect(200)).body.upstream).toEqual([1, 2]);
      await settle();
      expect(mw.isCoolingDown(1)).toBe(false);
    }
    const t0 = Date.now();
    await post().expect(200);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(true);
    expect(mw.isCoolingDown(2)).toBe(false);
    const cool = events.filter((e) => e.event === 'cooldown');
    expect(cool).toHaveLength(1);
    expect(cool[0].channelId).toBe(1);
    expect(cool[0].until! - t0).toBeGreaterThanOrEqual(29_000);
    expect(cool[0].until! - t0).toBeLessThanOrEqual(31_000);
    const r = await post().expect(200);
    expect(r.body).toMatchObject({ channel: 2, upstream: [2], tried: [2] });
  });

  test('failures older than windowMs do not add up', async () => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 2, windowMs: WINDOW_MS, durationMs: 60_000 } } });
    up.always(1, 503);
    await post().expect(200);
    await sleep(WINDOW_MS + 60);
    await post().expect(200);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(false);
    await post().expect(200);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(true);
  });

  test('a cooling channel comes back by itself after durationMs', async () => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 1, durationMs: COOL_MS } } });
    up.plan(1, 500);
    await post().expect(200);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(true);
    expect((await post().expect(200)).body.upstream).toEqual([2]);
    await sleep(COOL_MS + 60);
    expect(mw.isCoolingDown(1)).toBe(false);
    expect((await post().expect(200)).body.upstream).toEqual([1]);
  });

  test('when every channel is cooling the request gets 503 model_not_found, until the cooldown ends', async () => {
    const { post, up } = build({ channels: [ch(1)], health: { cooldown: { failures: 1, durationMs: COOL_MS } } });
    up.plan(1, 500);
    await post().expect(500);
    await settle();
    const r = await post().expect(503);
    expect(r.body.error.code).toBe('model_not_found');
    await sleep(COOL_MS + 60);
    await post().expect(200);
  });

  test('a retry never picks a channel that is cooling', async () => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5), ch(3, 1)], health: { cooldown: { failures: 1, durationMs: 60_000 } } });
    // cool channel 2 first (relay never retries to 2 because it is the lower tier)
    up.plan(1, 500).plan(2, 500);
    expect((await post().expect(200)).body.upstream).toEqual([1, 2, 3]);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(true);
    expect(mw.isCoolingDown(2)).toBe(true);
    expect((await post().expect(200)).body.upstream).toEqual([3]);
  });

  const cooldownRule: AffinityRule = { name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'header', key: 'x-session' }] };

  test("a cooling pinned channel is stale ('cooling'): cleared, another channel serves and takes the pin", async () => {
    const { post, up } = build({
      channels: [ch(1, 10), ch(2, 5)],
      affinity: { rules: [cooldownRule] },
      health: { cooldown: { failures: 1, durationMs: COOL_MS } },
    });
    const s = { 'x-session': 'S' };
    expect((await post(s).expect(200)).body.channel).toBe(1); // S -> 1
    await settle();
    up.plan(1, 500);
    await post().expect(200); // an unpinned request cools channel 1
    await settle();
    let r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: false, stale: 'cooling', cleared: true });
    expect(r.body.upstream).toEqual([2]);
    await sleep(COOL_MS + 60);
    await settle();
    r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: true });
    expect(r.body.channel).toBe(2); // the pin moved to 2 while 1 was cooling
  });

  test('keepOnChannelDisabled keeps a cooling pin: the session returns to its channel once the cooldown ends', async () => {
    const { post, up } = build({
      channels: [ch(1, 10), ch(2, 5)],
      affinity: { rules: [cooldownRule], keepOnChannelDisabled: true, switchOnSuccess: false },
      health: { cooldown: { failures: 1, durationMs: COOL_MS } },
    });
    const s = { 'x-session': 'S' };
    await post(s).expect(200);
    await settle();
    up.plan(1, 500);
    await post().expect(200);
    await settle();
    let r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: false, stale: 'cooling', cleared: false });
    await sleep(COOL_MS + 60);
    r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: true });
    expect(r.body.channel).toBe(1);
  });

  test('no cooldown unless health.cooldown is given', async () => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5)] });
    up.always(1, 500);
    for (let i = 0; i < 5; i++) await post().expect(200);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(false);
    expect((await post().expect(200)).body.upstream).toEqual([1, 2]);
  });
});

describe('what counts as a health failure', () => {
  // [label, upstream outcome, counted when reported through retry(), counted at finish with countUnreported]
  const counted: Array<[string, Outcome, boolean, boolean]> = [
    ['no status (connection error)', { error: new Error('ECONNRESET') }, true, true], // the fake relay answers 502
    ['429', 429, true, true],
    ['500', 500, true, true],
    ['503', 503, true, true],
    ['504 (5xx, though never retried)', 504, true, true],
    ['524', 524, true, true],
    ['501 (not implemented: the request asked for it)', 501, false, false],
    ['505', 505, false, false],
    ['404 (retryable by default, but the caller\'s)', 404, false, false],
    ['413 (the caller\'s body size)', 413, false, false],
    ['401 (only autoDisable may act on it)', 401, false, false],
    ['403', 403, false, false],
    ['400', 400, false, false],
    ['408', 408, false, false],
  ];
  test.each(counted)('retry() relay: %s counted = %s', async (_label, outcome, expected) => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 1, durationMs: 60_000 } } });
    up.plan(1, outcome);
    await post();
    await settle();
    expect(mw.isCoolingDown(1)).toBe(expected);
  });

  test.each(counted)('relay without retry(): %s never counts by default', async (_label, outcome) => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 1, durationMs: 60_000 } } }, { callRetry: false });
    up.plan(1, outcome);
    await post();
    await settle();
    expect(mw.isCoolingDown(1)).toBe(false);
  });

  test.each(counted)('relay without retry(), health.countUnreported: %s (reported: %s) counted = %s', async (_label, outcome, _reported, expected) => {
    const { post, up, mw } = build(
      { channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 1, durationMs: 60_000 }, countUnreported: true } },
      { callRetry: false },
    );
    up.plan(1, outcome);
    await post();
    await settle();
    expect(mw.isCoolingDown(1)).toBe(expected);
  });

  // the retry status list decides what is retried, not what counts against a channel
  test.each([[404, false], [401, false], [429, true], [502, true], [504, true]])(
    "with statusCodes '429,500-503' status %i counted = %s",
    async (status, expected) => {
      const { post, up, mw } = build({
        channels: [ch(1, 10), ch(2, 5)],
        retry: { statusCodes: '429,500-503' },
        health: { cooldown: { failures: 1, durationMs: 60_000 } },
      });
      up.plan(1, status);
      await post();
      await settle();
      expect(mw.isCoolingDown(1)).toBe(expected);
    },
  );

  test('400s never add up to a cooldown', async () => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 2, durationMs: 60_000 } } });
    up.always(1, 400);
    for (let i = 0; i < 5; i++) await post().expect(400);
    await settle();
    expect(mw.isCoolingDown(1)).toBe(false);
  });
});

describe('autoDisable', () => {
  test('S51: autoDisable {}: a 401 gives status 3 in the registry, and the 401 is still retried', async () => {
    const { post, up, registry, events } = build({ channels: [ch(1, 10), ch(2, 5)], health: { autoDisable: {} } });
    up.plan(1, 401);
    const r = await post().expect(200);
    expect(r.body.upstream).toEqual([1, 2]);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect(registry.get(2)!.status).toBe(ChannelStatus.Enabled);
    expect(events).toContainEqual({ channelId: 1, event: 'auto_disabled' });
    up.reset();
    expect((await post().expect(200)).body.upstream).toEqual([2]);
  });

  test('a 401 seen only at finish (a relay that never calls retry()) never auto-disables, even with countUnreported', async () => {
    for (const health of [{ autoDisable: {} }, { autoDisable: {}, countUnreported: true }]) {
      const { post, up, registry, events } = build({ channels: [ch(1, 10), ch(2, 5)], health }, { callRetry: false });
      up.plan(1, 401);
      await post().expect(401);
      await settle();
      expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
      expect(events).toEqual([]);
    }
  });

  test('a specific channel (admin pin) that reports a 401 through retry() is auto-disabled; unreported it is not', async () => {
    for (const [relay, expected] of [[{}, ChannelStatus.AutoDisabled], [{ callRetry: false }, ChannelStatus.Enabled]] as const) {
      const { post, up, registry } = build({ channels: [ch(1, 10), ch(7, 0, { models: 'other' })], health: { autoDisable: {} } }, relay);
      up.plan(7, 401);
      await post(ctx({ specificChannelId: 7 })).expect(401);
      await settle();
      expect(registry.get(7)!.status).toBe(expected);
    }
  });

  test('a specific channel that fails without retry() feeds cooldowns only with countUnreported', async () => {
    for (const countUnreported of [false, true]) {
      const { post, up, mw } = build(
        { channels: [ch(1, 10), ch(7, 0)], health: { cooldown: { failures: 1, durationMs: 60_000 }, countUnreported } },
        { callRetry: false },
      );
      up.plan(7, 503);
      await post(ctx({ specificChannelId: 7 })).expect(503);
      await settle();
      expect(mw.isCoolingDown(7)).toBe(countUnreported);
    }
  });

  const texts: Array<[string, unknown]> = [
    ['an Error, upper case', new Error('YOUR CREDIT BALANCE IS TOO LOW to access the API')],
    ['a string', 'billing: You exceeded your current quota, please check your plan'],
    ['an OpenAI-shaped body', { error: { message: 'permission denied for this model', type: 'invalid_request_error' } }],
    ['an object with message', { message: 'This organization has been disabled.' }],
  ];
  test.each(texts)('a default keyword in %s disables the channel (case-insensitive)', async (_label, error) => {
    const { post, up, registry } = build({ channels: [ch(1, 10), ch(2, 5)], health: { autoDisable: {} } });
    up.plan(1, { status: 403, error });
    await post().expect(200);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
  });

  test('a 403 without a keyword, and a 500, do not disable with the defaults', async () => {
    const { post, up, registry } = build({ channels: [ch(1, 10), ch(2, 5), ch(3, 1)], health: { autoDisable: {} } });
    up.plan(1, { status: 403, error: new Error('model not available in your region') }).plan(2, { status: 500, error: 'boom' });
    expect((await post().expect(200)).body.upstream).toEqual([1, 2, 3]);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
    expect(registry.get(2)!.status).toBe(ChannelStatus.Enabled);
  });

  test('custom statusCodes and keywords replace the defaults (keywords matched case-insensitively)', async () => {
    const { post, up, registry } = build({
      channels: [ch(1, 10), ch(2, 5), ch(3, 1), ch(4, 0)],
      retry: { times: 5 },
      health: { autoDisable: { statusCodes: [403], keywords: ['Quota Gone'] } },
    });
    up.plan(1, 403).plan(2, 401).plan(3, { status: 429, error: 'the QUOTA GONE for today' });
    expect((await post().expect(200)).body.upstream).toEqual([1, 2, 3, 4]);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect(registry.get(2)!.status).toBe(ChannelStatus.Enabled);
    expect(registry.get(3)!.status).toBe(ChannelStatus.AutoDisabled);
    // a default keyword no longer applies
    const b = build({ channels: [ch(1, 10), ch(2, 5)], health: { autoDisable: { keywords: ['quota gone'] } } });
    b.up.plan(1, { status: 403, error: 'Your credit balance is too low' });
    await b.post().expect(200);
    await settle();
    expect(b.registry.get(1)!.status).toBe(ChannelStatus.Enabled);
  });

  test('S52: autoBan false is never auto-disabled', async () => {
    const { post, up, registry } = build({ channels: [ch(1, 10, { autoBan: false }), ch(2, 5)], health: { autoDisable: {} } });
    up.plan(1, 401, { status: 403, error: 'Your credit balance is too low' });
    await post().expect(200);
    await post().expect(200);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
    up.reset();
    expect((await post().expect(200)).body.upstream).toEqual([1]);
  });

  test('auto-disable is off unless health.autoDisable is given', async () => {
    const { post, up, registry } = build({ channels: [ch(1, 10), ch(2, 5)] });
    up.plan(1, 401);
    await post().expect(200);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
  });

  test('re-enable with registry.setStatus(id, 1): the channel serves again', async () => {
    const { post, up, registry } = build({ channels: [ch(1, 10), ch(2, 5)], health: { autoDisable: {} } });
    up.plan(1, 401);
    await post().expect(200);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect((await post().expect(200)).body.upstream).toEqual([2]);
    expect(registry.setStatus(1, ChannelStatus.Enabled)).toBe(true);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
    expect((await post().expect(200)).body.upstream).toEqual([1]);
  });

  test('an auto-disabled pinned channel is a stale pin (disabled)', async () => {
    const rule: AffinityRule = { name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'header', key: 'x-session' }], skipRetryOnFailure: true };
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], affinity: { rules: [rule] }, health: { autoDisable: {} } });
    const s = { 'x-session': 'S' };
    await post(s).expect(200); // S -> 1
    await settle();
    up.plan(1, 401);
    // pin used + skip rule: no retry, but the 401 still disables channel 1
    expect((await post(s).expect(401)).body.stopReason).toBe('skip_rule');
    await settle();
    const r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: false });
    expect(r.body.channel).toBe(2);
  });
});

describe('multi-key channels', () => {
  test('auto-disable disables the failing key; with none left the channel becomes status 3 (S53 adapted)', async () => {
    const { post, up, registry, events } = build({
      channels: [ch(1, 10, { key: ['sk-a', 'sk-b'] }), ch(2, 5)],
      health: { autoDisable: {} },
      retry: { rotateKey: false }, // the reference's order: the next channel (rotation has its own tests)
    });
    up.plan(1, 401);
    let r = await post().expect(200);
    expect(r.body.upstream).toEqual([1, 2]);
    await settle();
    expect([...registry.get(1)!.disabledKeys]).toEqual([0]);
    expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
    expect(events).toContainEqual({ channelId: 1, event: 'key_disabled', keyIndex: 0 });

    up.reset();
    up.plan(1, 401);
    r = await post().expect(200);
    expect(r.body.upstream).toEqual([1, 2]);
    await settle();
    expect([...registry.get(1)!.disabledKeys].sort()).toEqual([0, 1]);
    expect(registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    up.reset();
    expect((await post().expect(200)).body.upstream).toEqual([2]);
  });

  test('the key that served is the one disabled (keyIndex of res.locals.channel)', async () => {
    const { post, up, registry } = build({
      channels: [ch(1, 10, { key: ['sk-a', 'sk-b', 'sk-c'], disabledKeys: [0] }), ch(2, 5)],
      retry: { times: 0 },
      health: { autoDisable: {} },
    });
    up.plan(1, 401);
    const r = await post().expect(401);
    expect(r.body.keyIndex).toBe(1);
    await settle();
    expect([...registry.get(1)!.disabledKeys].sort()).toEqual([0, 1]);
    expect(registry.get(1)!.status).toBe(ChannelStatus.Enabled);
    up.reset();
    expect((await post().expect(200)).body.keyIndex).toBe(2);
  });

  test('re-enabling a multi-key channel whose keys were all auto-disabled brings its configured keys back', async () => {
    const { post, up, registry } = build({
      channels: [ch(1, 10, { key: ['sk-a', 'sk-b', 'sk-c'], disabledKeys: [2] }), ch(2, 5)],
      health: { autoDisable: {} },
      retry: { rotateKey: false },
    });
    up.plan(1, 401, 401);
    await post().expect(200);
    await post().expect(200);
    await settle();
    expect(registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect([...registry.get(1)!.disabledKeys].sort()).toEqual([0, 1, 2]);
    registry.setStatus(1, ChannelStatus.Enabled);
    await settle();
    // the keys health switched off come back; the key disabled in the configuration stays off
    expect([...registry.get(1)!.disabledKeys]).toEqual([2]);
    const r = await post().expect(200);
    expect(r.body).toMatchObject({ channel: 1, keyIndex: 0, upstream: [1], tried: [1] });
  });

  test('a multi-key channel with every key disabled fails setup and falls back, even when pinned', async () => {
    const rule: AffinityRule = { name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'header', key: 'x-session' }], skipRetryOnFailure: true };
    const { post, registry } = build({ channels: [ch(1, 10, { key: ['sk-a', 'sk-b'] }), ch(2, 5)], affinity: { rules: [rule] } });
    const s = { 'x-session': 'S' };
    await post(s).expect(200); // S -> 1
    await settle();
    // every key switched off while the channel stays status 1
    registry.upsert(ch(1, 10, { key: ['sk-a', 'sk-b'], disabledKeys: [0, 1] }));
    const r = await post(s).expect(200);
    expect(r.body.channel).toBe(2);
    expect(r.body.affinity).toMatchObject({ hit: true, used: false, stale: 'setup_failed' });
    expect(r.body.attempts[0]).toMatchObject({ channelId: 1, phase: 'setup' });
    expect(r.body.attempts[0].reason).toMatch(/no enabled key/);
    expect(r.body.tried).toEqual([1, 2]);
  });
});

describe('health shared by distributors on one MemoryStore', () => {
  function pair(health: DistributorOptions['health']) {
    const store = new MemoryStore();
    stores.push(store);
    const channels = [ch(1, 10, { key: ['sk-a', 'sk-b'] }), ch(2, 5), ch(3, 1)];
    const a = build({ channels: new ChannelRegistry(channels), store, health });
    const b = build({ channels: new ChannelRegistry(channels), store, health });
    expect(a.registry).not.toBe(b.registry);
    return { store, a, b };
  }

  test('a cooldown started by one distributor is seen by the other', async () => {
    const { a, b } = pair({ cooldown: { failures: 2, durationMs: 60_000 } });
    a.up.plan(2, 500);
    b.up.plan(2, 500);
    // one failure of channel 2 on each instance: the count is shared, so 2 failures -> cooldown
    a.up.plan(1, 500);
    b.up.plan(1, 500);
    await a.post().expect(200);
    await settle();
    expect(a.mw.isCoolingDown(1)).toBe(false);
    await b.post().expect(200);
    await settle();
    expect(a.mw.isCoolingDown(1)).toBe(true);
    expect(b.mw.isCoolingDown(1)).toBe(true);
    expect(a.mw.isCoolingDown(2)).toBe(true);
    expect((await a.post().expect(200)).body.upstream).toEqual([3]);
    expect((await b.post().expect(200)).body.upstream).toEqual([3]);
  });

  test('an auto-disable on one shows as status 3 in the other registry; a re-enable travels back', async () => {
    const { a, b } = pair({ autoDisable: {} });
    a.up.plan(2, 401);
    // channel 1 is multi-key: fail both keys on instance a
    a.up.plan(1, 401);
    await a.post().expect(200);
    await settle();
    expect([...b.registry.get(1)!.disabledKeys]).toEqual([0]);
    a.up.plan(1, 401);
    await a.post().expect(200);
    await settle();
    expect(a.registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect(b.registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect(b.registry.get(2)!.status).toBe(ChannelStatus.AutoDisabled);
    expect((await b.post().expect(200)).body.upstream).toEqual([3]);
    a.registry.setStatus(2, ChannelStatus.Enabled);
    await settle();
    expect(b.registry.get(2)!.status).toBe(ChannelStatus.Enabled);
    expect((await b.post().expect(200)).body.upstream).toEqual([2]);
    // re-enabling the multi-key channel on b brings its keys back on both instances
    b.registry.setStatus(1, ChannelStatus.Enabled);
    await settle();
    for (const x of [a, b]) {
      expect(x.registry.get(1)!.status).toBe(ChannelStatus.Enabled);
      expect(x.registry.get(1)!.disabledKeys.size).toBe(0);
    }
    expect((await a.post().expect(200)).body).toMatchObject({ upstream: [1], keyIndex: 0 });
  });

  test('a distributor created later picks up the shared overrides and cooldowns', async () => {
    const store = new MemoryStore();
    stores.push(store);
    const channels = [ch(1, 10), ch(2, 5), ch(3, 1)];
    const a = build({ channels: new ChannelRegistry(channels), store, health: { autoDisable: {}, cooldown: { failures: 1, durationMs: 60_000 } } });
    a.up.plan(1, 401).plan(2, 503);
    await a.post().expect(200);
    await settle();
    const b = build({ channels: new ChannelRegistry(channels), store, health: { autoDisable: {}, cooldown: { failures: 1, durationMs: 60_000 } } });
    await b.mw.syncHealth();
    expect(b.registry.get(1)!.status).toBe(ChannelStatus.AutoDisabled);
    expect(b.mw.isCoolingDown(2)).toBe(true);
    expect((await b.post().expect(200)).body.upstream).toEqual([3]);
  });
});
