// Hostile callers: affinity keys scoped per caller (one tenant can neither use, pin nor evict
// another's session), values hashed at rest (memory and Redis, and never on the wire to Redis),
// bounded key length, operator regexes checked at creation and never run over unbounded
// user input (ReDoS), and no secret in any log line, hook event, trace header or error body.
import { afterAll, describe, expect, test } from '@jest/globals';
import fc from 'fast-check';
import { createClient } from 'redis';
import {
  ChannelStatus, DistributorError, affinityFromNewApi, defaultAffinityRules, distributor, type AffinityRule, type RequestContext,
} from '../../lib';
import { RedisStore } from '../../lib/entry/redis';
import { MAX_MATCHED_VALUE, matchAffinity } from '../../lib/affinity/key';
import { compileRules } from '../../lib/affinity/rules';
import { memoryLogger } from '../helpers/create-app';
import { RecordingStore } from '../helpers/recording-store';
import { describeRedis, flushPrefix } from '../helpers/redis';
import { closeClient, ctx, gateway, mock, post, stopAll, type Reply } from '../helpers/relay-kit';
import {
  CHANNEL_KEYS, CLAUDE_SESSION_SECRET, NESTED_SESSION_SECRET, SESSION_SECRET, TOKEN_A, TOKEN_B, X_API_KEY, counters, invoke, leakedSecrets, sleep,
} from './kit';

const SEED = 7_000_007;
const figures: Record<string, unknown> = {};
afterAll(async () => {
  await stopAll();
  await closeClient();
  // eslint-disable-next-line no-console
  console.log(`security figures: ${JSON.stringify(figures)}`);
});

const who = (r: Reply) => /(?:Hello from |resp_mock_)(\w+)/.exec(r.text)?.[1];
const KEY_SHAPE = /^aff:[^:]+:[A-Za-z0-9_-]{43}$/;

describe('affinity keys are scoped per caller', () => {
  test('tenant B, sending tenant A\'s session value, neither uses, moves nor evicts A\'s pin', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const store = new RecordingStore();
    const g = await gateway([
      { id: 1, name: 'a', models: 'gpt-4o-mini', baseUrl: `${a.url}/v1`, key: CHANNEL_KEYS[0] },
      { id: 2, name: 'b', models: 'gpt-4o-mini', baseUrl: `${b.url}/v1`, key: CHANNEL_KEYS[1], status: ChannelStatus.ManuallyDisabled },
    ], { store, affinity: { rules: defaultAffinityRules().map((r) => ({ ...r, skipRetryOnFailure: false })) } });
    const as = (token: string, tokenId: string) => ({ authorization: `Bearer ${token}`, ...ctx({ tokenId }) });
    const ask = (h: Record<string, string>) => post(g.url, { model: 'gpt-4o-mini', input: 'hi', prompt_cache_key: SESSION_SECRET }, h, '/v1/responses');

    expect(who(await ask(as(TOKEN_A, 'A')))).toBe('a'); // A pinned to a (b is off)
    await sleep(20);
    g.mw.registry.setStatus(2, ChannelStatus.Enabled);
    g.mw.registry.setStatus(1, ChannelStatus.ManuallyDisabled);
    // B, same value: with a shared key this would hit A's pin, find it stale, clear it and re-pin to b
    expect(who(await ask(as(TOKEN_B, 'B')))).toBe('b');
    expect(g.last().affinity).toMatchObject({ hit: false, cleared: false });
    await sleep(20);
    g.mw.registry.setStatus(1, ChannelStatus.Enabled);
    expect(who(await ask(as(TOKEN_A, 'A')))).toBe('a');
    expect(g.last().affinity).toMatchObject({ hit: true, used: true });
    expect(who(await ask(as(TOKEN_B, 'B')))).toBe('b');
    expect(g.last().affinity).toMatchObject({ hit: true, used: true });
    // B's pinned channel fails: B is retried on a and B's pin follows it; A's pin is not touched
    b.set({ failRate: 1, failStatus: 500 });
    const failed = await ask(as(TOKEN_B, 'B'));
    expect(failed.status).toBe(200);
    expect(who(failed)).toBe('a');
    expect(g.last()).toMatchObject({ tried: [2, 1], affinity: { hit: true, used: true } });
    b.set({ failRate: 0 });
    await sleep(20);
    expect(who(await ask(as(TOKEN_A, 'A')))).toBe('a');
    expect(g.last().affinity).toMatchObject({ hit: true, used: true });
    const aKey = store.of('getPin')[0][0] as string;
    const bKey = store.of('getPin')[1][0] as string;
    expect(aKey).not.toBe(bKey);
    for (const k of [aKey, bKey]) expect(k).toMatch(KEY_SHAPE);
    // every write and clear, by key: A's key was written once (its own first request) and never cleared
    const writes = (k: string) => store.of('setPin').filter((c) => c[0] === k).map((c) => c[1]);
    expect(writes(aKey)).toEqual(['1']);
    expect(writes(bKey)).toEqual(['2', '1']);
    expect(store.of('clearPin').filter((c) => c[0] === aKey)).toEqual([]);
    expect(await store.inner.getPin(aKey)).toBe('1');
    expect(await store.inner.getPin(bKey)).toBe('1');
  });

  test('without a tokenId the userId scopes the key; with neither, callers share it (documented)', async () => {
    const rules = compileRules(defaultAffinityRules(), 3600);
    const key = (c: RequestContext) => matchAffinity(rules, {
      req: { headers: {} } as never, res: { locals: {} } as never, model: 'gpt-4o', path: '/v1/responses', group: 'default', ctx: c, body: { prompt_cache_key: 'same' },
    })!.key;
    expect(key({ userId: 1 })).not.toBe(key({ userId: 2 }));
    expect(key({ tokenId: 1, userId: 1 })).not.toBe(key({ userId: 1 }));
    expect(key({ tokenId: 7 })).toBe(key({ tokenId: '7' })); // the same caller
    expect(key({})).toBe(key({}));
  });

  test('property: different callers never share a key, whatever the values (NULs, separators, unicode, 0-20,000 chars)', () => {
    const rules = compileRules([
      ...defaultAffinityRules(),
      { name: 'with model', modelRegex: ['.'], keySources: [{ type: 'header', key: 'x-s' }], includeModelName: true, includeUsingGroup: true, includeRuleName: true },
    ], 3600);
    const value = fc.oneof(fc.string({ unit: 'binary', maxLength: 40 }), fc.string({ maxLength: 20 }).map((s) => `${s}\u0000t:B\u0000${s}`), fc.integer({ min: 1000, max: 20000 }).map((n) => 'v'.repeat(n)));
    const caller = fc.oneof(fc.record({ tokenId: fc.oneof(fc.string({ minLength: 1, maxLength: 8 }), fc.integer({ min: 1 })) }), fc.record({ userId: fc.oneof(fc.string({ minLength: 1, maxLength: 8 }), fc.integer({ min: 1 })) }));
    let pairs = 0;
    fc.assert(fc.property(caller, caller, value, value, fc.constantFrom('/v1/responses', '/v1/chat/completions'), (c1, c2, v1, v2, path) => {
      const id = (c: RequestContext) => (c.tokenId !== undefined ? `t:${String(c.tokenId)}` : `u:${String(c.userId)}`);
      fc.pre(id(c1) !== id(c2));
      const k = (c: RequestContext, v: string) => matchAffinity(rules, {
        req: { headers: { 'x-s': v } } as never, res: { locals: {} } as never, model: 'gpt-4o', path, group: 'default', ctx: c, body: { prompt_cache_key: v },
      });
      const m1 = k(c1, v1);
      const m2 = k(c2, v2);
      if (!m1 || !m2) return;
      pairs++;
      expect(m1.key).not.toBe(m2.key);
      expect(m1.key).toMatch(KEY_SHAPE);
      expect(m1.key.length).toBe(`aff:${encodeURIComponent(m1.rule.name)}:`.length + 43);
      if (v1.length >= 8) expect(m1.key).not.toContain(v1);
    }), { numRuns: 3000, seed: SEED });
    figures.callerScopePairs = pairs;
  });
});

describe('values are hashed at rest and the key length is bounded', () => {
  test('every source (header, body, nested JSON, query, context) reaches the store only as a fixed-length hash', async () => {
    const store = new RecordingStore();
    const rule: AffinityRule = {
      name: 'all sources', modelRegex: ['^gpt-'],
      keySources: [{ type: 'header', key: 'x-s' }, { type: 'query', key: 'session' }, { type: 'context', key: 'sessionTag' }, { type: 'body', path: 'metadata.user_id', nestedPath: 'session_id' }, { type: 'body', path: 'prompt_cache_key' }],
    };
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o-mini', key: CHANNEL_KEYS[0] }], store, logger: memoryLogger(), affinity: { rules: [rule] }, validate: false });
    try {
      const values = [SESSION_SECRET, CLAUDE_SESSION_SECRET, NESTED_SESSION_SECRET, 'x'.repeat(1_000_000), '😀'.repeat(50_000), 'a\u0000b'];
      const lengths = new Set<number>();
      for (const v of values) {
        for (const [headers, body, path, c] of [
          [{ 'x-s': v.slice(0, 8000) }, {}, '/v1/chat/completions', {}],
          [{}, {}, `/v1/chat/completions?session=${encodeURIComponent(v.slice(0, 8000))}`, {}],
          [{}, {}, '/v1/chat/completions', { sessionTag: v }],
          [{}, { metadata: { user_id: JSON.stringify({ session_id: v }) } }, '/v1/chat/completions', {}],
          [{}, { prompt_cache_key: v }, '/v1/chat/completions', {}],
        ] as Array<[Record<string, string>, Record<string, unknown>, string, RequestContext]>) {
          const inv = await invoke(mw, { headers, body: { model: 'gpt-4o-mini', ...body }, path, ctx: { tokenId: 'T', ...c } });
          expect(inv.next).toBe(true);
          inv.res.finish(200);
        }
      }
      await sleep(10);
      for (const k of store.pinKeys()) {
        expect(k).toMatch(KEY_SHAPE);
        lengths.add(k.length);
        expect(leakedSecrets(k)).toEqual([]);
      }
      expect(lengths.size).toBe(1); // one length, whatever the value's length (up to 1,000,000 chars)
      expect(store.pinKeys().length).toBeGreaterThan(25);
      figures.keyLength = [...lengths][0];
    } finally {
      await mw.shutdown();
    }
  });

  describeRedis('RedisStore', (url) => {
    test('no raw value in any key, any stored value, or any command sent to Redis (MONITOR)', async () => {
      const client = createClient({ url });
      client.on('error', () => undefined);
      await client.connect();
      const monitor = createClient({ url });
      monitor.on('error', () => undefined);
      await monitor.connect();
      const prefix = 'rel-sec:';
      const seen: string[] = [];
      await monitor.monitor((line: unknown) => {
        seen.push(String(line));
      });
      const up = await mock({ name: 'm' });
      const g = await gateway([{ id: 1, models: 'gpt-4o-mini,claude-3-5-sonnet', baseUrl: `${up.url}/v1`, key: CHANNEL_KEYS[0] }], { store: new RedisStore({ client, prefix }) });
      try {
        const h = { authorization: `Bearer ${TOKEN_A}`, 'x-api-key': X_API_KEY, ...ctx({ tokenId: 'A' }) };
        for (let i = 0; i < 2; i++) {
          expect((await post(g.url, { model: 'gpt-4o-mini', input: 'hi', prompt_cache_key: SESSION_SECRET }, h, '/v1/responses')).status).toBe(200);
          expect((await post(g.url, { model: 'claude-3-5-sonnet', messages: [] }, { ...h, 'x-claude-code-session-id': CLAUDE_SESSION_SECRET }, '/v1/messages')).status).toBe(404);
          expect((await post(g.url, { model: 'claude-3-5-sonnet', metadata: { user_id: JSON.stringify({ session_id: NESTED_SESSION_SECRET }) } }, h, '/v1/messages')).status).toBe(404);
          await sleep(30);
        }
        const keys = (await client.sendCommand(['KEYS', `${prefix}*`])) as string[];
        const pinKeys = keys.filter((k) => k.startsWith(`${prefix}aff:`));
        expect(pinKeys.length).toBe(1); // the /v1/messages calls failed upstream (the mock has no such route): nothing pinned for them
        for (const k of keys) {
          expect(leakedSecrets(k)).toEqual([]);
          if (k.startsWith(`${prefix}aff:`)) {
            expect(k.slice(prefix.length)).toMatch(KEY_SHAPE);
            expect(await client.sendCommand(['GET', k])).toMatch(/^1:\d+$/);
          }
        }
        await sleep(50);
        expect(seen.length).toBeGreaterThan(4);
        expect(leakedSecrets(seen.join('\n'))).toEqual([]);
        figures.redisCommandsMonitored = seen.length;
      } finally {
        await monitor.destroy();
        await flushPrefix((a) => client.sendCommand(a), prefix);
        client.destroy();
      }
    });
  });
});

describe('operator regexes: checked at creation, never run over unbounded user input', () => {
  test('invalid patterns in modelRegex, pathRegex and valueRegex are refused by distributor() naming the rule', () => {
    const base: AffinityRule = { name: 'r', modelRegex: ['^gpt-'], keySources: [{ type: 'header', key: 'x-s' }] };
    const bad: Array<[string, Partial<AffinityRule>]> = [
      ['unclosed group in modelRegex', { modelRegex: ['(gpt'] }],
      ['bad class in pathRegex', { pathRegex: ['[z-a]'] }],
      ['dangling quantifier in valueRegex', { valueRegex: '*abc' }],
      ['a non-string pattern', { modelRegex: [42 as unknown as string] }],
      ['a Go-only flag group', { valueRegex: '(?s).+' }],
    ];
    for (const [label, patch] of bad) {
      let err: unknown;
      try {
        distributor({ channels: [{ id: 1, models: 'gpt-4o' }], logger: memoryLogger(), affinity: { rules: [{ ...base, ...patch, name: `rule ${label}` }] } });
      } catch (e) {
        err = e;
      }
      expect({ label, code: (err as DistributorError)?.code }).toEqual({ label, code: 'ERR_DIST_INVALID_OPTIONS' });
      expect((err as Error).message).toContain(`rule ${label}`);
    }
  });

  test('Go patterns from new-api without a JS equivalent are reported naming the rule and the pattern', () => {
    for (const pattern of ['\\pL+', '(?s)a.b', '[[:alpha:]]+', '\\Qa.b\\E']) {
      let err: unknown;
      try {
        affinityFromNewApi({ rules: [{ name: 'go rule', model_regex: ['^gpt'], key_sources: [{ type: 'request_header', key: 'x' }], value_regex: pattern }] });
      } catch (e) {
        err = e;
      }
      expect((err as DistributorError)?.code).toBe('ERR_DIST_INVALID_OPTIONS');
      expect((err as Error).message).toContain('go rule');
      expect((err as Error).message).toContain(JSON.stringify(pattern));
    }
    // (?i) has an equivalent and is converted
    expect(affinityFromNewApi({ rules: [{ name: 'ok', model_regex: ['(?i)^GPT'], key_sources: [{ type: 'request_header', key: 'x' }] }] }).rules?.[0].modelRegex).toEqual(['(?i)^GPT']);
  });

  test('ReDoS: a quadratic valueRegex never sees more than 1,024 characters of a 200,000-character value', async () => {
    const rule: AffinityRule = { name: 'quadratic value', modelRegex: ['^gpt-'], keySources: [{ type: 'body', path: 'session' }], valueRegex: 'a+$' };
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o-mini' }], logger: memoryLogger(), affinity: { rules: [rule] }, validate: false });
    try {
      const hostile = `${'a'.repeat(200_000)}!`;
      const t = performance.now();
      const inv = await invoke(mw, { body: { model: 'gpt-4o-mini', session: hostile } });
      const bounded = performance.now() - t;
      expect(inv.next).toBe(true);
      expect(inv.res.locals.distribution?.affinity?.rule).toBe('quadratic value'); // the first 1,024 characters match
      inv.res.finish(200);
      expect(bounded).toBeLessThan(250);
      // the control: the same pattern over 30,000 characters of the value, unbounded
      const c = performance.now();
      /a+$/.test(hostile.slice(-30_001));
      const control = performance.now() - c;
      expect(control).toBeGreaterThan(5 * bounded);
      figures.redosValue = { boundedMs: Number(bounded.toFixed(1)), unbounded30kMs: Number(control.toFixed(1)), bound: MAX_MATCHED_VALUE };
    } finally {
      await mw.shutdown();
    }
  });

  test('ReDoS: an unanchored modelRegex (gpt-.*-mini) is not run over a 200,000-character model, nor a pathRegex over a long path', async () => {
    const rules: AffinityRule[] = [
      { name: 'mini', modelRegex: ['gpt-.*-mini'], keySources: [{ type: 'header', key: 'x-s' }] },
      { name: 'paths', modelRegex: ['^m$'], pathRegex: ['/v1/.*/x$'], keySources: [{ type: 'header', key: 'x-s' }] },
    ];
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o-mini,m' }], logger: memoryLogger(), affinity: { rules }, validate: false });
    try {
      const t = performance.now();
      const inv = await invoke(mw, { headers: { 'x-s': 's' }, body: { model: 'gpt-'.repeat(50_000) } });
      const ms = performance.now() - t;
      expect(inv.next).toBe(false);
      expect(inv.res.statusCode).toBe(503); // no channel serves such a model; no affinity was attempted
      expect(ms).toBeLessThan(250);
      const p = performance.now();
      const inv2 = await invoke(mw, { headers: { 'x-s': 's' }, body: { model: 'm' }, path: `/v1/${'/v1/'.repeat(4000)}` });
      const pathMs = performance.now() - p;
      expect(inv2.next).toBe(true);
      expect(inv2.res.locals.distribution?.affinity).toBeUndefined();
      inv2.res.finish(200);
      expect(pathMs).toBeLessThan(250);
      // normal-length models and paths still match
      const ok = await invoke(mw, { headers: { 'x-s': 's' }, body: { model: 'gpt-4o-mini' } });
      expect(ok.res.locals.distribution?.affinity?.rule).toBe('mini');
      ok.res.finish(200);
      const c = performance.now();
      /gpt-.*-mini/.test('gpt-'.repeat(8000));
      figures.redosModel = { boundedMs: Number(ms.toFixed(1)), unbounded32kCharsMs: Number((performance.now() - c).toFixed(1)), pathMs: Number(pathMs.toFixed(1)) };
    } finally {
      await mw.shutdown();
    }
  });
});

describe('secrets never reach logs, hooks, trace headers or error bodies', () => {
  test('debug logging, every hook, setup errors and upstream errors that carry every secret', async () => {
    const logger = memoryLogger();
    const events: string[] = [];
    const hook = (name: string) => (e: Record<string, unknown>) => {
      const { req: _req, channel, ...rest } = e;
      events.push(`${name} ${JSON.stringify({ ...rest, channelId: (channel as { id?: number } | undefined)?.id })}`);
    };
    const good = await mock({ name: 'good' });
    const echo = await mock({ name: 'echo', failRate: 1, failStatus: 401, failMessage: 'Incorrect API key provided: {auth}' });
    const g = await gateway([
      { id: 1, models: 'gpt-4o-mini', priority: 10, baseUrl: `${echo.url}/v1`, key: CHANNEL_KEYS[0] },
      { id: 2, models: 'gpt-4o-mini', priority: 5, baseUrl: `${good.url}/v1`, key: [CHANNEL_KEYS[1], CHANNEL_KEYS[2]] },
      { id: 3, models: 'gpt-4o-mini', priority: 0, baseUrl: `${good.url}/v1`, key: CHANNEL_KEYS[3] },
    ], {
      logger, traceHeader: true,
      health: { cooldown: { failures: 1, windowMs: 60_000, durationMs: 200 }, autoDisable: {} },
      affinity: { rules: defaultAffinityRules().map((r) => ({ ...r, skipRetryOnFailure: false })) },
      on: Object.fromEntries(['select', 'affinityHit', 'affinityMiss', 'affinityStale', 'fallback', 'retry', 'exhausted', 'storeError', 'health'].map((n) => [n, hook(n)])),
      setup: (ch, req) => {
        if (req.headers['x-fail-setup'] === String(ch.id)) throw new Error(`no way with ${ch.key} for ${String(req.headers.authorization)} ${String(req.headers['x-api-key'])} ${JSON.stringify(req.body)}`);
      },
    });
    const h = { authorization: `Bearer ${TOKEN_A}`, 'x-api-key': X_API_KEY, ...ctx({ tokenId: 'A' }) };
    const replies: Reply[] = [];
    const send = async (extra: Record<string, string> = {}) => {
      const r = await post(g.url, { model: 'gpt-4o-mini', input: 'hi', prompt_cache_key: SESSION_SECRET }, { ...h, ...extra }, '/v1/responses');
      replies.push(r);
      return r;
    };
    expect((await send()).status).toBe(200); // 1 answers 401 echoing its key (auto-disabled), 2 serves
    expect((await send({ 'x-fail-setup': '2' })).status).toBe(200); // the pin's setup fails: falls back to 3
    g.mw.registry.setStatus(1, ChannelStatus.Enabled);
    await sleep(250);
    expect((await send({ 'x-fail-setup': '2' })).status).toBe(200);
    good.set({ failRate: 1, failStatus: 500, failMessage: `upstream echo {auth} ${SESSION_SECRET}` });
    const failed = await send();
    expect(failed.status).toBeGreaterThanOrEqual(400);
    await sleep(30);
    const everything = [
      logger.text(), events.join('\n'),
      ...replies.map((r) => `${r.status} ${JSON.stringify(r.headers)} ${r.text}`),
      ...g.errors.map((e) => e.message),
      JSON.stringify(g.seen),
    ].join('\n');
    expect(logger.lines.some((l) => l.level === 'debug')).toBe(true); // debug lines were on
    expect(events.some((e) => e.startsWith('fallback'))).toBe(true);
    expect(everything).toContain('[REDACTED]');
    expect(leakedSecrets(everything)).toEqual([]);
    expect(counters(g.mw)).toEqual({ active: 0, retrying: 0 });
    figures.secretsScan = { logLines: logger.lines.length, hookEvents: events.length, replies: replies.length };
  });
});
