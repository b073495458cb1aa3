// res.locals.distribution.retry() through the public API, over HTTP, with a fake relay that
// simulates upstream results per channel (docs/retry-and-health.md, docs/channels-and-selection.md;
// new-api's retry behaviour where the docs say we follow it).
import { afterEach, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { distributor, DistributorError, type AffinityRule, type ChannelInput, type DistributorHandler, type DistributorOptions } from '../lib';
import { createApp, ctx, memoryLogger } from './helpers/create-app';
import { FakeUpstreams, fakeRelay, settle, type RelayOptions } from './helpers/fake-relay';

const mws: DistributorHandler[] = [];
afterEach(async () => {
  for (const mw of mws.splice(0)) await mw.shutdown();
});

const ch = (id: number, priority = 0, extra: Partial<ChannelInput> = {}): ChannelInput => ({
  id, models: 'gpt-4o', priority, key: `sk-key-${id}`, ...extra,
});

const sessRule = (skipRetryOnFailure: boolean): AffinityRule => ({
  name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'header', key: 'x-session' }], skipRetryOnFailure,
});

type Opts = Partial<DistributorOptions> & Pick<DistributorOptions, 'channels'>;

/** App with the fake relay; `random: () => 0` makes every pick the first untried channel of a tier. */
function build(options: Opts, relay: RelayOptions = {}) {
  const up = new FakeUpstreams();
  const { app, mw } = createApp({ random: () => 0, ...options }, { handler: fakeRelay(up, relay) });
  mws.push(mw);
  const post = (headers: Record<string, string> = {}) =>
    request(app).post('/v1/chat/completions').set(headers).send({ model: 'gpt-4o' });
  return { app, mw, up, post };
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    const mw = fn() as DistributorHandler | undefined;
    if (mw && typeof mw.shutdown === 'function') void mw.shutdown();
  } catch (e) {
    return e instanceof DistributorError ? e.code : `not a DistributorError: ${String(e)}`;
  }
  return undefined;
}

describe('retry.times (one upstream budget per request)', () => {
  test('default times 2: at most 3 upstream attempts, then stopReason "times" and the last status', async () => {
    const { post, up } = build({ channels: [ch(1), ch(2), ch(3), ch(4), ch(5)] });
    for (const id of [1, 2, 3, 4, 5]) up.always(id, 500);
    const r = await post().expect(500);
    expect(r.body.upstream).toHaveLength(3);
    expect(new Set(r.body.upstream).size).toBe(3);
    expect(r.body.stopReason).toBe('times');
    expect(r.body.tried).toEqual(r.body.upstream);
    expect(r.body.attempts).toEqual(r.body.upstream.map((id: number) => ({ channelId: id, phase: 'upstream', status: 500 })));
  });

  test('times 0: the only attempt\'s failure goes to the client (S47)', async () => {
    const { post, up } = build({ channels: [ch(1), ch(2)], retry: { times: 0 } });
    up.always(1, 503);
    const r = await post().expect(503);
    expect(r.body.upstream).toEqual([1]);
    expect(r.body.stopReason).toBe('times');
  });

  test('a retry that succeeds ends with that channel and no stopReason', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)] });
    up.plan(1, 500);
    const r = await post().expect(200);
    expect(r.body).toMatchObject({ channel: 2, localsChannel: 2, tried: [1, 2], stopReason: null, upstream: [1, 2] });
    expect(r.body.attempts).toEqual([{ channelId: 1, phase: 'upstream', status: 500 }]);
  });

  test('custom times 4 with 6 channels: 5 attempts', async () => {
    const { post, up } = build({ channels: [1, 2, 3, 4, 5, 6].map((i) => ch(i)), retry: { times: 4 } });
    up.fallback = 500;
    const r = await post().expect(500);
    expect(r.body.upstream).toEqual([1, 2, 3, 4, 5]);
    expect(r.body.stopReason).toBe('times');
  });
});

describe('retry.statusCodes', () => {
  const cases: Array<[number, boolean]> = [
    [500, true], [502, true], [503, true], [429, true], [401, true], [403, true], [404, true], [409, true], [301, true], [505, true],
    [100, true], [400, false], [408, false], [504, false], [524, false],
  ];
  test.each(cases)('default ranges: status %i retried = %s (S48, S49)', async (status, retried) => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)] });
    up.plan(1, { status });
    const r = await post();
    if (retried) {
      expect(r.status).toBe(200);
      expect(r.body.upstream).toEqual([1, 2]);
      expect(r.body.stopReason).toBeNull();
    } else {
      expect(r.status).toBe(status < 400 ? 502 : status);
      expect(r.body.upstream).toEqual([1]);
      expect(r.body.stopReason).toBe('status');
    }
  });

  const custom: Array<[string, string | Array<number | string>, number, boolean]> = [
    ['string', '429,500-503', 429, true],
    ['string', '429,500-503', 500, true],
    ['string', '429,500-503', 502, true],
    ['string', '429,500-503', 503, true],
    ['string', '429,500-503', 401, false],
    ['string', '429,500-503', 404, false],
    ['string', '429,500-503', 505, false],
    ['full-width comma and spaces', '429， 500 - 503', 501, true],
    ['full-width comma and spaces', '429， 500 - 503', 403, false],
    ['numbers', [429, 500], 429, true],
    ['numbers', [429, 500], 500, true],
    ['numbers', [429, 500], 502, false],
    ['mixed', [429, '500-502'], 501, true],
    ['504 listed (always skipped)', [504, 500], 504, false],
    ['524 listed (always skipped)', '520-530', 524, false],
    ['524 listed (always skipped)', '520-530', 525, true],
  ];
  test.each(custom)('custom %s %j: status %i retried = %s', async (_label, statusCodes, status, retried) => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], retry: { statusCodes } });
    up.plan(1, status);
    const r = await post();
    expect(r.body.upstream).toEqual(retried ? [1, 2] : [1]);
    expect(r.body.stopReason).toBe(retried ? null : 'status');
  });

  test('a failure without a status (connection refused, timeout) is retryable', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], retry: { statusCodes: '429' } });
    up.plan(1, { error: new Error('connect ECONNREFUSED 127.0.0.1:9') });
    const r = await post().expect(200);
    expect(r.body.upstream).toEqual([1, 2]);
    expect(r.body.attempts).toHaveLength(1);
    expect(r.body.attempts[0]).toMatchObject({ channelId: 1, phase: 'upstream' });
    expect(r.body.attempts[0].status).toBeUndefined();
    expect(r.body.attempts[0].reason).toContain('ECONNREFUSED');
  });

  test('an empty failure {} and a status outside 100-599 are retryable', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5), ch(3, 1)], retry: { statusCodes: '429' } });
    up.plan(1, {}).plan(2, { status: 999 });
    const r = await post().expect(200);
    expect(r.body.upstream).toEqual([1, 2, 3]);
  });

  test('a 2xx reported to retry() is not retryable', async () => {
    const { app, mw } = createApp({ channels: [ch(1, 10), ch(2, 5)], random: () => 0 }, {
      handler: async (_req, res) => {
        const next = await res.locals.distribution!.retry({ status: 204 });
        res.json({ next: next?.id ?? null, stopReason: res.locals.distribution!.stopReason });
      },
    });
    mws.push(mw);
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body).toEqual({ next: null, stopReason: 'status' });
  });

  test('the upstream error text in attempts is redacted (channel key removed)', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)] });
    up.plan(1, { status: 502, error: new Error('upstream refused key sk-key-1 for this call') });
    const r = await post().expect(200);
    expect(r.body.attempts[0].reason).not.toContain('sk-key-1');
    expect(r.body.attempts[0].reason).toContain('[REDACTED]');
  });

  const bad: Array<[string, unknown]> = [
    ['a word', 'abc'],
    ['a status above 599', '600'],
    ['a reversed range', '503-500'],
    ['a two-digit status', '99'],
    ['a range past 599', '500-650'],
    ['a number below 100', [42]],
    ['a fractional number', [429.5]],
    ['null in the list', [null]],
    ['a bare number', 500],
    ['an object', { 500: true }],
  ];
  test.each(bad)('statusCodes with %s -> ERR_DIST_INVALID_OPTIONS', (_label, statusCodes) => {
    expect(codeOf(() => distributor({ channels: [ch(1)], logger: memoryLogger(), retry: { statusCodes: statusCodes as never } }))).toBe('ERR_DIST_INVALID_OPTIONS');
  });
});

describe('which channel a retry picks', () => {
  test('never repeats a tried channel (random picks, many requests)', async () => {
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
    const { post, up } = build({ channels: [ch(1, 0, { weight: 5 }), ch(2, 0, { weight: 1 }), ch(3, 0), ch(4, -1, { weight: 2 })], random, retry: { times: 10 } });
    up.fallback = 500;
    for (let i = 0; i < 25; i++) {
      const r = await post().expect(500);
      expect(r.body.upstream).toHaveLength(4);
      expect(new Set(r.body.upstream).size).toBe(4);
      expect(r.body.upstream[3]).toBe(4); // the lower tier only after the top tier is used up
      expect(r.body.stopReason).toBe('no_channel');
    }
  });

  test("'restart' (default): the highest tier that still has an untried channel", async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 10), ch(3, 5), ch(4, 1)], retry: { times: 3 } });
    up.fallback = 500;
    const r = await post().expect(500);
    expect(r.body.upstream).toEqual([1, 2, 3, 4]);
  });

  test("'descend': one tier down per attempt; the lowest tier used up passes upward", async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 10), ch(3, 5), ch(4, 1)], retry: { times: 3, tierStrategy: 'descend' } });
    up.fallback = 500;
    const r = await post().expect(500);
    expect(r.body.upstream).toEqual([1, 3, 4, 2]);
    expect(r.body.stopReason).toBe('times');
  });

  test('S20 adapted: A(p10) B(p5) C(p1), times 3, all 500 -> A, B, C then no_channel (the reference repeats C)', async () => {
    for (const tierStrategy of ['restart', 'descend'] as const) {
      const { post, up } = build({ channels: [ch(1, 10), ch(2, 5), ch(3, 1)], retry: { times: 3, tierStrategy } });
      up.fallback = 500;
      const r = await post().expect(500);
      expect(r.body.upstream).toEqual([1, 2, 3]);
      expect(r.body.stopReason).toBe('no_channel');
    }
  });

  test('S21: five channels at p5 and one at p4, times 1: restart stays in p5, descend goes to p4', async () => {
    const channels = [ch(1, 5), ch(2, 5), ch(3, 5), ch(4, 5), ch(5, 5), ch(6, 4)];
    const restart = build({ channels, retry: { times: 1 } });
    restart.up.plan(1, 500);
    expect((await restart.post().expect(200)).body.upstream).toEqual([1, 2]);
    const descend = build({ channels, retry: { times: 1, tierStrategy: 'descend' } });
    descend.up.plan(1, 500);
    expect((await descend.post().expect(200)).body.upstream).toEqual([1, 6]);
  });

  test("'descend' from a pinned middle tier: a used-up tier passes down, then up", async () => {
    const run = async (tierStrategy: 'restart' | 'descend') => {
      const { post, up } = build({
        channels: [ch(1, 10), ch(2, 5), ch(3, 1)],
        retry: { tierStrategy },
        affinity: { rules: [sessRule(false)] },
      });
      const s = { 'x-session': 'S1' };
      up.plan(1, 500); // 1 fails, 2 serves: the pin goes to 2
      expect((await post(s).expect(200)).body.upstream).toEqual([1, 2]);
      await settle();
      up.fallback = 500;
      const r = await post(s).expect(500);
      expect(r.body.affinity).toMatchObject({ hit: true, used: true });
      return r.body.upstream as number[];
    };
    expect(await run('descend')).toEqual([2, 3, 1]);
    expect(await run('restart')).toEqual([2, 1, 3]);
  });

  test("'descend' moving to the next auto group starts at that group's top tier", async () => {
    const channels = [ch(1, 10, { group: 'g1' }), ch(2, 10, { group: 'g2' }), ch(3, 5, { group: 'g2' })];
    const { post, up } = build({ channels, autoGroups: ['g1', 'g2'], retry: { tierStrategy: 'descend' } });
    up.fallback = 500;
    const r = await post(ctx({ group: 'auto', crossGroupRetry: true })).expect(500);
    expect(r.body.upstream).toEqual([1, 2, 3]);
    expect(r.body.selectedGroup).toBe('g2');
  });

  test('a channel that failed setup during a retry is skipped and costs no upstream retry', async () => {
    const { post, up } = build({
      channels: [ch(1, 10), ch(2, 5), ch(3, 1)],
      retry: { times: 1 },
      setup: (c) => {
        if (c.id === 2) throw new Error('no route to channel 2');
      },
    });
    up.fallback = 500;
    const r = await post().expect(500);
    expect(r.body.upstream).toEqual([1, 3]);
    expect(r.body.tried).toEqual([1, 2, 3]);
    expect(r.body.attempts).toEqual([
      { channelId: 1, phase: 'upstream', status: 500 },
      { channelId: 2, phase: 'setup', reason: 'no route to channel 2' },
      { channelId: 3, phase: 'upstream', status: 500 },
    ]);
    expect(r.body.stopReason).toBe('times');
  });

  test('retry() returns the new channel and updates res.locals.channel (with its own key)', async () => {
    const seen: Array<{ id: number; key?: string }> = [];
    const { app, mw } = createApp({ channels: [ch(1, 10), ch(2, 5)], random: () => 0 }, {
      handler: async (_req, res) => {
        const d = res.locals.distribution!;
        seen.push({ id: res.locals.channel!.id, key: res.locals.channel!.key });
        const next = await d.retry({ status: 500 });
        seen.push({ id: next!.id, key: next!.key });
        seen.push({ id: res.locals.channel!.id, key: res.locals.channel!.key });
        res.json({ same: next === res.locals.channel, frozen: Object.isFrozen(next) });
      },
    });
    mws.push(mw);
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body).toEqual({ same: true, frozen: true });
    expect(seen).toEqual([{ id: 1, key: 'sk-key-1' }, { id: 2, key: 'sk-key-2' }, { id: 2, key: 'sk-key-2' }]);
  });

  test('retry() is bound: it works destructured, and without an argument (no status)', async () => {
    const { app, mw } = createApp({ channels: [ch(1, 10), ch(2, 5)], random: () => 0 }, {
      handler: async (_req, res) => {
        const { retry } = res.locals.distribution!;
        const next = await retry();
        res.json({ next: next?.id ?? null, attempts: res.locals.distribution!.attempts });
      },
    });
    mws.push(mw);
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.next).toBe(2);
    expect(r.body.attempts).toEqual([{ channelId: 1, phase: 'upstream' }]);
  });
});

describe('stop reasons', () => {
  test("specific channel: retry() returns null with 'specific_channel' (no retry even for a 500)", async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5), ch(7, 0, { models: 'other' })] });
    up.always(7, 500);
    const r = await post(ctx({ specificChannelId: 7 })).expect(500);
    expect(r.body).toMatchObject({ channel: 7, upstream: [7], tried: [7], stopReason: 'specific_channel' });
  });

  test("no untried eligible channel: 'no_channel'", async () => {
    const { post, up } = build({ channels: [ch(1), ch(2, 0, { models: 'other' }), ch(3, 0, { status: 2 })] });
    up.always(1, 502);
    const r = await post().expect(502);
    expect(r.body).toMatchObject({ upstream: [1], stopReason: 'no_channel' });
  });

  test("non-retryable status: 'status'", async () => {
    const { post, up } = build({ channels: [ch(1, 1), ch(2)] });
    up.plan(1, 400);
    expect((await post().expect(400)).body).toMatchObject({ upstream: [1], stopReason: 'status' });
  });

  test("retry budget with minConcurrent 0 and a tiny percent: 'budget'", async () => {
    const { post, up } = build({ channels: [ch(1, 1), ch(2)], retry: { budget: { percent: 1, minConcurrent: 0 } } });
    up.plan(1, 500);
    expect((await post().expect(500)).body).toMatchObject({ upstream: [1], stopReason: 'budget' });
  });

  test("retry budget counts requests retrying right now: a second concurrent retry gets 'budget', a later one does not", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let holding!: () => void;
    const held = new Promise<void>((r) => (holding = r));
    const { post, up } = build(
      { channels: [ch(1, 10), ch(2, 5)], retry: { budget: { percent: 1, minConcurrent: 1 } } },
      {
        between: async (req) => {
          if (req.headers['x-hold']) {
            holding();
            await gate;
          }
        },
      },
    );
    up.always(1, 500);
    const first = post({ 'x-hold': '1' }).then((r) => r);
    await held;
    let second;
    try {
      second = await post();
    } finally {
      release();
    }
    expect(second.status).toBe(500);
    expect(second.body).toMatchObject({ upstream: [1], stopReason: 'budget' });
    const r1 = await first;
    expect(r1.status).toBe(200);
    expect(r1.body.upstream).toEqual([1, 2]);
    await settle();
    const third = await post().expect(200);
    expect(third.body).toMatchObject({ upstream: [1, 2], stopReason: null });
  });
});

describe('skip-retry rules apply only when the pin was used', () => {
  test('#4540 / S33 adapted: a matching rule with a cache miss never blocks retries', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], affinity: { rules: [sessRule(true)] } });
    up.plan(1, 429);
    const r = await post({ 'x-session': 'new-session' }).expect(200);
    expect(r.body.affinity).toMatchObject({ rule: 'sess', hit: false, used: false });
    expect(r.body.upstream).toEqual([1, 2]);
  });

  test("a used pin whose rule has skipRetryOnFailure stops with 'skip_rule' (S35 adapted: also for a failure without status)", async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], affinity: { rules: [sessRule(true)] } });
    const s = { 'x-session': 'S' };
    expect((await post(s).expect(200)).body.channel).toBe(1); // pins S -> 1
    await settle();
    up.plan(1, 429);
    let r = await post(s).expect(429);
    expect(r.body.affinity).toMatchObject({ hit: true, used: true });
    expect(r.body).toMatchObject({ upstream: [1], stopReason: 'skip_rule' });
    await settle();
    // the 429 cleared the pin (clearOnFailure): pin it again, then fail without a status
    expect((await post(s).expect(200)).body.channel).toBe(1);
    await settle();
    up.plan(1, { error: new Error('socket hang up') });
    r = await post(s).expect(502);
    expect(r.body.affinity).toMatchObject({ used: true });
    expect(r.body.stopReason).toBe('skip_rule');
  });

  test('S34: a used pin whose rule has skipRetryOnFailure false is retried', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], affinity: { rules: [sessRule(false)] } });
    const s = { 'x-session': 'S' };
    await post(s).expect(200);
    await settle();
    up.plan(1, 429);
    const r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: true });
    expect(r.body.upstream).toEqual([1, 2]);
  });

  test('S30 adapted: a stale pin kept by keepOnChannelDisabled does not make the selected channel skip retries', async () => {
    const { post, up, mw } = build({
      channels: [ch(1, 10), ch(2, 5), ch(3, 1)],
      affinity: { rules: [sessRule(true)], keepOnChannelDisabled: true },
    });
    const s = { 'x-session': 'S' };
    await post(s).expect(200); // S -> 1
    await settle();
    mw.registry.setStatus(1, 2);
    up.plan(2, 500);
    const r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: false, stale: 'disabled', cleared: false });
    expect(r.body.upstream).toEqual([2, 3]);
  });

  test('a stale pin that was cleared does not block retries either', async () => {
    const { post, up, mw } = build({ channels: [ch(1, 10), ch(2, 5), ch(3, 1)], affinity: { rules: [sessRule(true)] } });
    const s = { 'x-session': 'S' };
    await post(s).expect(200);
    await settle();
    mw.registry.setStatus(1, 2);
    up.plan(2, 503);
    const r = await post(s).expect(200);
    expect(r.body.affinity).toMatchObject({ hit: true, used: false, stale: 'disabled', cleared: true });
    expect(r.body.upstream).toEqual([2, 3]);
  });
});

describe('auto group: one budget across groups (S26 adapted)', () => {
  const channels = [ch(1, 10, { group: 'g1' }), ch(2, 5, { group: 'g1' }), ch(3, 0, { group: 'g2' })];
  const auto = (crossGroupRetry: boolean) => ctx({ group: 'auto', crossGroupRetry });

  test('times 1: two attempts in total, not one budget per group (the reference makes four)', async () => {
    const { post, up } = build({ channels, autoGroups: ['g1', 'g2'], retry: { times: 1 } });
    up.fallback = 500;
    const r = await post(auto(true)).expect(500);
    expect(r.body).toMatchObject({ upstream: [1, 2], stopReason: 'times', selectedGroup: 'g1' });
  });

  test('times 2: the third attempt moves on to g2 and the budget is then used up', async () => {
    const { post, up } = build({ channels, autoGroups: ['g1', 'g2'], retry: { times: 2 } });
    up.fallback = 500;
    const r = await post(auto(true)).expect(500);
    expect(r.body).toMatchObject({ upstream: [1, 2, 3], stopReason: 'times', selectedGroup: 'g2' });
  });

  test('a large budget: every channel of every auto group once, then no_channel', async () => {
    const { post, up } = build({ channels, autoGroups: ['g1', 'g2'], retry: { times: 9 } });
    up.fallback = 500;
    const r = await post(auto(true)).expect(500);
    expect(r.body).toMatchObject({ upstream: [1, 2, 3], stopReason: 'no_channel' });
  });

  test('without crossGroupRetry retries stay in the selected group', async () => {
    const { post, up } = build({ channels, autoGroups: ['g1', 'g2'], retry: { times: 9 } });
    up.fallback = 500;
    const r = await post(auto(false)).expect(500);
    expect(r.body).toMatchObject({ upstream: [1, 2], stopReason: 'no_channel', selectedGroup: 'g1' });
  });

  test('a retry that moved to g2 and succeeded reports selectedGroup g2', async () => {
    const { post, up } = build({ channels, autoGroups: ['g1', 'g2'] });
    up.plan(1, 500).plan(2, 500);
    const r = await post(auto(true)).expect(200);
    expect(r.body).toMatchObject({ channel: 3, upstream: [1, 2, 3], selectedGroup: 'g2', stopReason: null });
  });
});

describe('hooks', () => {
  test('retry and exhausted fire with from/to/status/attempt and reason/tried/status', async () => {
    const retries: unknown[] = [];
    const exhausted: unknown[] = [];
    const { post, up } = build({
      channels: [ch(1, 10), ch(2, 5), ch(3, 1)],
      on: {
        retry: ({ from, to, status, attempt }) => retries.push({ from, to, status, attempt }),
        exhausted: ({ reason, tried, status }) => exhausted.push({ reason, tried, status }),
      },
    });
    up.plan(1, 500).plan(2, 429).plan(3, 503);
    await post().expect(503);
    expect(retries).toEqual([{ from: 1, to: 2, status: 500, attempt: 1 }, { from: 2, to: 3, status: 429, attempt: 2 }]);
    expect(exhausted).toEqual([{ reason: 'times', tried: [1, 2, 3], status: 503 }]);
  });

  test('a throwing hook never breaks the retry', async () => {
    const { post, up } = build({
      channels: [ch(1, 10), ch(2, 5)],
      on: { retry: () => { throw new Error('hook bug'); }, exhausted: () => { throw new Error('hook bug'); } },
    });
    up.plan(1, 500);
    expect((await post().expect(200)).body.upstream).toEqual([1, 2]);
    up.plan(1, 400);
    expect((await post().expect(400)).body.stopReason).toBe('status');
  });
});

describe('Retry-After (retryAfterMs + maxRetryAfterMs)', () => {
  test('waits and retries the same channel when it is the only candidate left', async () => {
    const { post, up } = build({ channels: [ch(1)], retry: { maxRetryAfterMs: 200 } });
    up.plan(1, { status: 429, retryAfterMs: 80 });
    const t0 = Date.now();
    const r = await post().expect(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(75);
    expect(r.body).toMatchObject({ channel: 1, upstream: [1, 1], tried: [1], stopReason: null });
    expect(r.body.attempts).toEqual([{ channelId: 1, phase: 'upstream', status: 429 }]);
  });

  test('each wait uses the upstream budget', async () => {
    const { post, up } = build({ channels: [ch(1)], retry: { maxRetryAfterMs: 100, times: 1 } });
    up.always(1, { status: 429, retryAfterMs: 10 });
    const r = await post().expect(429);
    expect(r.body).toMatchObject({ upstream: [1, 1], stopReason: 'times' });
  });

  test('does not wait when Retry-After is longer than maxRetryAfterMs, or when waiting is off (default)', async () => {
    for (const retry of [{ maxRetryAfterMs: 50 }, {}]) {
      const { post, up } = build({ channels: [ch(1)], retry });
      up.plan(1, { status: 429, retryAfterMs: 5_000 });
      const t0 = Date.now();
      const r = await post().expect(429);
      expect(Date.now() - t0).toBeLessThan(2_000);
      expect(r.body).toMatchObject({ upstream: [1], stopReason: 'no_channel' });
    }
  });

  test('does not wait when another channel is left: moves on instead', async () => {
    const { post, up } = build({ channels: [ch(1, 10), ch(2, 5)], retry: { maxRetryAfterMs: 5_000 } });
    up.plan(1, { status: 429, retryAfterMs: 3_000 });
    const t0 = Date.now();
    const r = await post().expect(200);
    expect(Date.now() - t0).toBeLessThan(2_000);
    expect(r.body.upstream).toEqual([1, 2]);
  });

  test('does not wait for a status that is not retryable', async () => {
    const { post, up } = build({ channels: [ch(1)], retry: { maxRetryAfterMs: 200 } });
    up.plan(1, { status: 400, retryAfterMs: 10 });
    expect((await post().expect(400)).body).toMatchObject({ upstream: [1], stopReason: 'status' });
  });
});

describe('pins after a failure (clearOnFailure, switchOnSuccess)', () => {
  const s = { 'x-session': 'S' };
  async function pinned(options: Partial<DistributorOptions> = {}, relay: RelayOptions = {}) {
    const b = build({ channels: [ch(1, 10), ch(2, 5)], ...options, affinity: { rules: [sessRule(false)], ...options.affinity } }, relay);
    expect((await b.post(s).expect(200)).body.channel).toBe(1);
    await settle();
    return b;
  }
  const next = async (b: ReturnType<typeof build>) => {
    await settle();
    b.up.reset();
    return (await b.post(s).expect(200)).body;
  };

  test('a pinned channel that failed with a retryable status, with nothing re-pinning it, loses the pin', async () => {
    const b = await pinned();
    b.up.always(1, 500).always(2, 503);
    const r = await b.post(s).expect(503);
    expect(r.body.upstream).toEqual([1, 2]);
    expect((await next(b)).affinity).toMatchObject({ hit: false, used: false });
  });

  test('a non-retryable status (400) keeps the pin', async () => {
    const b = await pinned();
    b.up.plan(1, 400);
    expect((await b.post(s).expect(400)).body.stopReason).toBe('status');
    const body = await next(b);
    expect(body.affinity).toMatchObject({ hit: true, used: true });
    expect(body.channel).toBe(1);
  });

  test('S36: switchOnSuccess moves the pin to the channel that served after a retry', async () => {
    const b = await pinned();
    b.up.plan(1, 500);
    expect((await b.post(s).expect(200)).body.upstream).toEqual([1, 2]);
    const body = await next(b);
    expect(body.affinity).toMatchObject({ hit: true, used: true });
    expect(body.channel).toBe(2); // pinned to the lower tier
    expect(body.upstream).toEqual([2]);
  });

  test('S36: switchOnSuccess false and clearOnFailure false: the pin stays on the first channel', async () => {
    const b = await pinned({ affinity: { switchOnSuccess: false, clearOnFailure: false } });
    b.up.plan(1, 500);
    expect((await b.post(s).expect(200)).body.upstream).toEqual([1, 2]);
    const body = await next(b);
    expect(body.affinity).toMatchObject({ hit: true, used: true });
    expect(body.channel).toBe(1);
  });

  test('switchOnSuccess false with clearOnFailure (default): the failed pinned channel loses the pin', async () => {
    const b = await pinned({ affinity: { switchOnSuccess: false } });
    b.up.plan(1, 500);
    expect((await b.post(s).expect(200)).body.upstream).toEqual([1, 2]);
    expect((await next(b)).affinity).toMatchObject({ hit: false });
  });

  test('a miss: the new pin goes to the channel that served after a retry', async () => {
    const b = build({ channels: [ch(1, 10), ch(2, 5)], affinity: { rules: [sessRule(false)] } });
    b.up.plan(1, 500);
    const first = (await b.post(s).expect(200)).body;
    expect(first).toMatchObject({ upstream: [1, 2], affinity: { hit: false } });
    const body = await next(b);
    expect(body).toMatchObject({ channel: 2, affinity: { hit: true, used: true } });
  });

  test('switchOnSuccess false: a pinned channel that served after a Retry-After wait keeps its pin', async () => {
    const b = build({
      channels: [ch(1)],
      retry: { maxRetryAfterMs: 200 },
      affinity: { rules: [sessRule(false)], switchOnSuccess: false },
    });
    await b.post(s).expect(200); // S -> 1
    await settle();
    b.up.plan(1, { status: 429, retryAfterMs: 20 });
    expect((await b.post(s).expect(200)).body).toMatchObject({ upstream: [1, 1], affinity: { used: true } });
    expect((await next(b)).affinity).toMatchObject({ hit: true, used: true });
  });

  test('clearOnFailure false keeps the pin after a failed request', async () => {
    const b = await pinned({ affinity: { clearOnFailure: false } });
    b.up.always(1, 500).always(2, 500);
    await b.post(s).expect(500);
    const body = await next(b);
    expect(body.affinity).toMatchObject({ hit: true, used: true });
    expect(body.channel).toBe(1);
  });

  test('a relay that never calls retry() but answers 500: the pin is cleared', async () => {
    const b = await pinned({}, { callRetry: false });
    b.up.plan(1, 500);
    expect((await b.post(s).expect(500)).body).toMatchObject({ upstream: [1], stopReason: null });
    expect((await next(b)).affinity).toMatchObject({ hit: false });
  });

  test('a relay that never calls retry() but answers 400: the pin is kept', async () => {
    const b = await pinned({}, { callRetry: false });
    b.up.plan(1, 400);
    await b.post(s).expect(400);
    expect((await next(b)).affinity).toMatchObject({ hit: true, used: true });
  });

  test('a relay that never calls retry() but answers 500 feeds health (cooldown) with health.countUnreported', async () => {
    const b = build({ channels: [ch(1, 10), ch(2, 5)], health: { cooldown: { failures: 1, durationMs: 60_000 }, countUnreported: true } }, { callRetry: false });
    b.up.plan(1, 500);
    await b.post().expect(500);
    await settle();
    expect(b.mw.isCoolingDown(1)).toBe(true);
    expect((await b.post().expect(200)).body.upstream).toEqual([2]);
  });

  test('a retry that served on another channel after the pinned one failed re-pins: nothing is cleared', async () => {
    const b = await pinned();
    b.up.plan(1, 502);
    await b.post(s).expect(200);
    await settle();
    // the pin now points to 2; 2 failing with a 400 (not retryable) keeps it
    b.up.plan(2, 400);
    expect((await b.post(s).expect(400)).body).toMatchObject({ upstream: [2], stopReason: 'status' });
    const body = await next(b);
    expect(body).toMatchObject({ channel: 2, affinity: { used: true } });
  });
});
