// Property-based tests (fast-check): HTTP fuzzing of request parsing through the real relay,
// gjson-style paths, status-range parsing, selection invariants (pure and end to end with hostile
// pins, setup failures, cooldowns and retries), and weighted picks converging to the weights.
// Seeds are fixed, so a failure reproduces; the seed and the counterexample are in the report.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import express, { type NextFunction, type Request, type Response } from 'express';
import fc from 'fast-check';
import http from 'node:http';
import {
  ChannelRegistry, ChannelStatus, DistributorError, MemoryStore, defaultAffinityRules, distributor, type AffinityRule, type ChannelInput, type DistributorHandler, type RequestContext,
} from '../../lib';
import { isRetryable, parseStatusRanges, relay, type RelayHandler } from '../../lib/entry/relay';
import { compilePath, getNested, getPath, valueText } from '../../lib/request/json-path';
import { selectChannel } from '../../lib/selection/select';
import { startMockUpstream, type MockUpstream } from '../../examples/gateway/mock-upstream';
import { memoryLogger } from '../helpers/create-app';
import {
  CHANNEL_KEYS, CLAUDE_SESSION_SECRET, SESSION_SECRET, TOKEN_A, TOKEN_B, X_API_KEY, chiSquare, chiSquareCritical, counters, invoke,
  leakedSecrets, listen, openAiError, pollutionProbe, prototypeSnapshot, seeded, sendRaw, sleep,
} from './kit';

const SEED = 20240607;
const protoBefore = prototypeSnapshot();
const figures: Record<string, unknown> = {};

afterAll(() => {
  expect(prototypeSnapshot()).toEqual(protoBefore);
  expect(pollutionProbe().polluted).toBeUndefined();
  // eslint-disable-next-line no-console
  console.log(`property figures: ${JSON.stringify(figures)}`);
});

// ---- 1. any body, content type and header: a 2xx from the relay or an OpenAI-shaped 4xx / 503 ----

describe('HTTP fuzzing through distributor() and relay()', () => {
  const logger = memoryLogger();
  let up: MockUpstream;
  let mw: DistributorHandler;
  let fwd: RelayHandler;
  let gw: Awaited<ReturnType<typeof listen>>;
  const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  const reachedExpress: unknown[] = [];
  let relayed = 0;

  beforeAll(async () => {
    up = await startMockUpstream({ name: 'fuzz' });
    mw = distributor({
      channels: [
        { id: 1, models: 'gpt-4o-mini,gpt-4o', priority: 10, weight: 2, baseUrl: `${up.url}/v1`, key: CHANNEL_KEYS[0] },
        { id: 2, group: 'default,vip', models: 'gpt-4o-mini,claude-3-5-sonnet', priority: 10, weight: 1, baseUrl: `${up.url}/v1`, key: [CHANNEL_KEYS[1], CHANNEL_KEYS[2]] },
        { id: 3, models: 'gemini-2.0-flash,gpt-4o-realtime,whisper-1', baseUrl: `${up.url}/v1`, key: CHANNEL_KEYS[3] },
      ],
      logger,
      bodyLimit: '64kb',
      multipart: true,
      allowBodyGroup: true,
      usableGroups: (ug) => (ug === 'vip' ? ['default', 'vip'] : ['default']),
      affinity: {
        rules: [
          ...defaultAffinityRules(),
          { name: 'fuzz rule', modelRegex: ['gpt-.*-mini', '^claude'], keySources: [{ type: 'header', key: 'x-session-id' }, { type: 'query', key: 'session' }, { type: 'body', path: 'metadata.session\\.id' }], valueRegex: '^[\\w-]+$' },
        ],
      },
    });
    fwd = relay({ timeoutMs: 5000 });
    const app = express();
    app.set('etag', false);
    app.use((req: Request, res: Response, next: NextFunction) => {
      const h = req.headers.authorization;
      const ctx: Record<string, RequestContext> = { [`Bearer ${TOKEN_A}`]: { tokenId: 'A', group: 'default' }, [`Bearer ${TOKEN_B}`]: { tokenId: 'B', group: 'vip', userGroup: 'vip' } };
      if (typeof h !== 'string' || !Object.prototype.hasOwnProperty.call(ctx, h)) {
        res.status(401).json({ error: { message: 'Invalid API key', type: 'invalid_request_error', code: 'invalid_api_key' } });
        return;
      }
      res.locals.token = ctx[h];
      next();
    });
    app.use(mw);
    app.post(['/v1/chat/completions', '/v1/responses'], (req, res, next) => {
      relayed++;
      fwd(req, res, next);
    });
    app.use((_req: Request, res: Response) => res.status(200).json({ object: 'fake.ok', channel: res.locals.channel?.id }));
    app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
      reachedExpress.push(err);
      res.status(500).json({ error: { message: 'unexpected', type: 'test', code: 'unexpected' } });
    });
    gw = await listen(app);
  });

  afterAll(async () => {
    agent.destroy();
    await gw?.close();
    await fwd?.close();
    await mw?.shutdown();
    await up?.close();
  });

  const latin1 = fc.oneof(fc.integer({ min: 0x20, max: 0x7e }), fc.integer({ min: 0xa0, max: 0xff })).map((c) => String.fromCharCode(c));
  const headerValue = fc.string({ unit: latin1, maxLength: 300 });
  const jsonish = fc.jsonValue({ maxDepth: 4 });
  const protoKey = fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'prompt_cache_key', 'metadata');
  const bodyObject = fc.record({
    model: fc.oneof(
      { weight: 8, arbitrary: fc.constantFrom('gpt-4o-mini', 'gpt-4o', 'claude-3-5-sonnet') },
      { weight: 1, arbitrary: fc.constantFrom('gemini-2.0-flash', 'nope', '', '__proto__') },
      { weight: 1, arbitrary: jsonish },
      { weight: 1, arbitrary: fc.string({ maxLength: 40 }) },
    ),
    group: fc.oneof({ weight: 6, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: fc.constantFrom('default', 'vip', 'auto', '__proto__') }, { weight: 1, arbitrary: jsonish }),
    prompt_cache_key: fc.oneof(fc.constant(SESSION_SECRET), jsonish),
    metadata: fc.oneof(jsonish, fc.record({ user_id: fc.oneof(fc.constant(`{"session_id":"${CLAUDE_SESSION_SECRET}"}`), fc.string()), 'session.id': fc.string({ maxLength: 20 }) })),
    stream: fc.boolean(),
    extra: fc.dictionary(fc.oneof(protoKey, fc.string({ maxLength: 10 })), jsonish, { maxKeys: 4 }),
  }, { requiredKeys: ['model'] }).map((o) => {
    // put the dictionary's keys (including __proto__ as an own key) at the top level
    const { extra, ...rest } = o;
    return JSON.stringify({ ...rest }).replace(/}$/, '') + Object.entries(extra ?? {}).map(([k, v]) => `,${JSON.stringify(k)}:${JSON.stringify(v)}`).join('') + '}';
  }).map((s) => s.replace('{,', '{'));
  const body = fc.oneof(
    { weight: 12, arbitrary: bodyObject.map((s) => Buffer.from(s, 'utf8')) },
    { weight: 2, arbitrary: fc.json({ maxDepth: 4 }).map((s) => Buffer.from(s, 'utf8')) },
    { weight: 2, arbitrary: fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)) },
    { weight: 1, arbitrary: fc.string({ maxLength: 200 }).map((s) => Buffer.from(s, 'utf8')) },
    { weight: 1, arbitrary: fc.tuple(fc.constantFrom('model', 'group', '__proto__[x]', 'model[]'), fc.string({ maxLength: 30 })).map(([k, v]) => Buffer.from(`${k}=${encodeURIComponent(v)}&model=gpt-4o-mini`)) },
    { weight: 1, arbitrary: fc.integer({ min: 64 * 1024 - 100, max: 64 * 1024 + 100 }).map((n) => Buffer.from(`{"model":"gpt-4o-mini","p":"${'x'.repeat(Math.max(0, n - 30))}"}`)) },
  );
  const contentType = fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom('application/json', 'application/json; charset=utf-8') },
    fc.constantFrom('application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/vnd.x+json', 'text/plain',
      'application/x-www-form-urlencoded', 'multipart/form-data', 'multipart/form-data; boundary=xyz', 'application/octet-stream', ''),
    headerValue,
  );
  const path = fc.oneof(
    { weight: 6, arbitrary: fc.constantFrom('/v1/chat/completions', '/v1/responses') },
    fc.constantFrom('/v1/messages', '/v1/embeddings', '/v1/audio/transcriptions', '/v1/moderations'),
    fc.string({ maxLength: 30 }).map((m) => `/v1beta/models/${encodeURIComponent(m)}:generateContent`),
    fc.string({ maxLength: 30 }).map((m) => `/v1/realtime?model=${encodeURIComponent(m)}`),
    fc.string({ maxLength: 30 }).map((s) => `/v1/chat/completions?session=${encodeURIComponent(s)}`),
  );
  const extraHeaders = fc.array(fc.tuple(fc.constantFrom('x-session-id', 'x-claude-code-session-id', 'user-agent', 'x-random', 'session_id', 'accept', 'x-api-key'), headerValue), { maxLength: 4 });
  const token = fc.oneof({ weight: 6, arbitrary: fc.constant(TOKEN_A) }, { weight: 2, arbitrary: fc.constant(TOKEN_B) }, { weight: 1, arbitrary: fc.constantFrom('bogus-token', undefined) });

  let wellFormedSeen = 0;
  /** Token A, POST to a relayed path, a JSON content type, a JSON object body under the limit with a served model and no other group. */
  function wellFormed(method: string, p: string, ct: string, b: Buffer, tok: string | undefined): boolean {
    if (tok !== TOKEN_A || method !== 'POST' || !['/v1/chat/completions', '/v1/responses'].includes(p)) return false;
    if (!/^application\/json/i.test(ct) || b.length > 64 * 1024) return false;
    let o: unknown;
    try {
      o = JSON.parse(b.toString('utf8'));
    } catch {
      return false;
    }
    if (!o || typeof o !== 'object' || Array.isArray(o)) return false;
    const own = (k: string) => (Object.prototype.hasOwnProperty.call(o, k) ? (o as Record<string, unknown>)[k] : undefined);
    return ['gpt-4o-mini', 'gpt-4o', 'claude-3-5-sonnet'].includes(own('model') as string) && [undefined, null, '', 'default'].includes(own('group') as string);
  }

  test('500 random requests: never a 500, a crash or a leaked secret; 2xx only from the relay', async () => {
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(fc.constantFrom('POST', 'POST', 'POST', 'PUT'), path, contentType, body, extraHeaders, token, async (method, p, ct, b, extra, tok) => {
        const headers: Array<[string, string]> = [['content-type', ct], ['x-api-key', X_API_KEY]];
        if (tok) headers.push(['authorization', `Bearer ${tok}`]);
        for (const [k, v] of extra) headers.push([k, v]);
        const r = await sendRaw(gw.url, { method, path: p, headers, body: b }, agent);
        seen.set(r.status, (seen.get(r.status) ?? 0) + 1);
        // An oracle for the well-formed subset: it must be served.
        if (wellFormed(method, p, ct, b, tok)) {
          wellFormedSeen++;
          expect({ status: r.status, text: r.text.slice(0, 200) }).toMatchObject({ status: 200 });
        }
        expect(r.error).toBeUndefined();
        expect([200, 400, 401, 403, 413, 503]).toContain(r.status);
        if (r.status === 200) {
          if (method === 'POST' && (p.startsWith('/v1/chat/completions') || p === '/v1/responses')) {
            expect(r.text).toMatch(/mock[-_]fuzz/); // a chat / responses object or SSE stream from the mock upstream
          } else {
            expect(JSON.parse(r.text)).toMatchObject({ object: 'fake.ok' });
          }
        } else {
          expect(openAiError(r.text)).toBeDefined();
        }
        expect(leakedSecrets(r.text + JSON.stringify(r.headers), [...CHANNEL_KEYS, TOKEN_A, TOKEN_B, X_API_KEY])).toEqual([]);
      }),
      { numRuns: 500, seed: SEED },
    );
    await sleep(50);
    expect(reachedExpress).toEqual([]);
    expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
    expect(up.stats.hits).toBe(relayed); // nothing lost, nothing duplicated: one upstream call per relayed request
    expect(leakedSecrets(logger.text())).toEqual([]);
    expect(wellFormedSeen).toBeGreaterThan(25); // the oracle did run
    figures.httpFuzz = { runs: 500, statuses: Object.fromEntries([...seen].sort((a, b) => a[0] - b[0])), relayed, wellFormedServed: wellFormedSeen };
  });
});

// ---- 2. gjson-style paths ---------------------------------------------------------------------

describe('gjson-style paths', () => {
  const segment = fc.oneof(
    fc.constantFrom('__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'length', '0', '1', '', 'a.b', 'a\\b', '\\', '.'),
    fc.string({ maxLength: 8 }),
  );
  const escape = (s: string) => s.replace(/\\/g, '\\\\').replace(/\./g, '\\.');

  /** An independent walk: own data properties only, arrays by decimal index. */
  function reference(root: unknown, segs: string[]): unknown {
    let cur = root;
    for (const s of segs) {
      if (cur === null || typeof cur !== 'object') return undefined;
      if (Array.isArray(cur)) {
        if (!/^\d+$/.test(s)) return undefined;
        cur = cur[Number(s)];
        continue;
      }
      const d = Object.getOwnPropertyDescriptor(cur, s);
      if (!d) return undefined;
      cur = d.value;
    }
    return cur;
  }

  test('compilePath(escaped path) gives back the segments (dots and backslashes escaped)', () => {
    fc.assert(fc.property(fc.array(segment, { minLength: 1, maxLength: 6 }), (segs) => {
      expect(compilePath(segs.map(escape).join('.'))).toEqual(segs);
    }), { numRuns: 2000, seed: SEED });
  });

  test('getPath follows own properties only: equal to an independent walk, never a prototype member', () => {
    // JSON text with __proto__ / constructor keys, parsed the way bodies are (own properties)
    const jsonText = fc.jsonValue({ maxDepth: 4 }).chain((v) => fc.tuple(fc.constant(v), fc.array(fc.tuple(segment, fc.jsonValue({ maxDepth: 2 })), { maxLength: 3 })))
      .map(([v, extra]) => {
        const base = v !== null && typeof v === 'object' && !Array.isArray(v) ? JSON.stringify(v).slice(1, -1) : '"v":' + JSON.stringify(v);
        const more = extra.map(([k, x]) => `${JSON.stringify(k)}:${JSON.stringify(x)}`);
        return `{${[base, ...more].filter(Boolean).join(',')}}`;
      });
    fc.assert(fc.property(jsonText, fc.array(segment, { minLength: 1, maxLength: 5 }), (text, segs) => {
      const root = JSON.parse(text) as unknown;
      const got = getPath(root, segs);
      expect(got).toEqual(reference(root, segs));
      expect(typeof got).not.toBe('function');
      expect(got === Object.prototype || got === Array.prototype).toBe(false);
      const t = valueText(got);
      expect(typeof t).toBe('string');
    }), { numRuns: 3000, seed: SEED });
  });

  test('getNested and valueText never throw, whatever the value (strings that are almost JSON, deep nesting)', () => {
    const almostJson = fc.oneof(fc.json(), fc.string(), fc.json().map((s) => s.slice(0, Math.max(0, s.length - 1))), fc.integer({ min: 1, max: 20000 }).map((n) => '['.repeat(n) + ']'.repeat(n)));
    fc.assert(fc.property(almostJson, fc.array(segment, { minLength: 1, maxLength: 3 }), (v, segs) => {
      const out = valueText(getNested(v, segs));
      expect(typeof out).toBe('string');
    }), { numRuns: 2000, seed: SEED });
    const deep = JSON.parse('['.repeat(50000) + ']'.repeat(50000)) as unknown;
    expect(valueText(deep)).toBe(''); // too deep to serialise: no value, no exception
  });
});

// ---- 3. status ranges ---------------------------------------------------------------------------

describe('status-range parsing', () => {
  const range = fc.tuple(fc.integer({ min: 100, max: 599 }), fc.integer({ min: 0, max: 60 }), fc.boolean())
    .map(([a, len, single]) => (single ? ([a, a] as const) : ([a, Math.min(599, a + len)] as const)));
  const ws = fc.constantFrom('', ' ', '  ', '\t');

  test('any list of statuses and ranges gives exactly their union (string with , or ， and spaces; array form)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(range, ws, ws, fc.constantFrom(',', '，')), { maxLength: 12 }), (items) => {
      const expected = new Set<number>();
      for (const [[a, b]] of items) for (let s = a; s <= b; s++) expected.add(s);
      const spec = items.map(([[a, b], w1, w2, sep]) => `${w1}${a === b ? a : `${a}${w2}-${w2}${b}`}${w2}${sep}`).join('');
      const want = new Uint8Array(600);
      for (const s of expected) want[s] = 1;
      const table = parseStatusRanges(spec);
      const arrayTable = parseStatusRanges(items.map(([[a, b]]) => (a === b ? a : `${a}-${b}`)));
      if (Buffer.compare(Buffer.from(table), Buffer.from(want)) !== 0) expect([...table]).toEqual([...want]);
      if (Buffer.compare(Buffer.from(arrayTable), Buffer.from(want)) !== 0) expect([...arrayTable]).toEqual([...want]);
    }), { numRuns: 500, seed: SEED });
  });

  test('isRetryable: 2xx, 504 and 524 never; no status / out of range always; else the table', () => {
    const table = parseStatusRanges('100-599');
    fc.assert(fc.property(fc.oneof(fc.integer({ min: -1000, max: 2000 }), fc.double(), fc.constant(undefined)), (s) => {
      const r = isRetryable(table, s as number | undefined);
      if (s === undefined || !Number.isInteger(s) || (s as number) < 100 || (s as number) > 599) expect(r).toBe(true);
      else if ((s as number) >= 200 && (s as number) < 300) expect(r).toBe(false);
      else if (s === 504 || s === 524) expect(r).toBe(false);
      else expect(r).toBe(true);
    }), { numRuns: 3000, seed: SEED });
  });

  test('any string either parses or throws ERR_DIST_INVALID_OPTIONS (never another error), and never marks a status outside 100-599', () => {
    const spec = fc.oneof(
      fc.string({ maxLength: 30 }),
      fc.tuple(fc.array(fc.oneof(fc.integer({ min: 0, max: 1000 }), fc.string({ maxLength: 8 })), { maxLength: 5 }), fc.constantFrom(',', '-', '，', ' ', ',,'))
        .map(([a, sep]) => a.join(sep)),
    );
    let parsed = 0;
    fc.assert(fc.property(spec, (s) => {
      try {
        const t = parseStatusRanges(s);
        parsed++;
        for (let i = 0; i < 100; i++) expect(t[i]).toBe(0);
      } catch (e) {
        expect(e).toBeInstanceOf(DistributorError);
        expect((e as DistributorError).code).toBe('ERR_DIST_INVALID_OPTIONS');
      }
    }), { numRuns: 3000, seed: SEED });
    figures.statusRangeStringsParsed = parsed;
  });
});

// ---- 4. selection invariants (pure) -------------------------------------------------------------

interface GenChannel {
  status: ChannelStatus;
  groups: string[];
  models: string[];
  priority: number;
  weight: number;
}
const genChannel = fc.record({
  status: fc.constantFrom(ChannelStatus.Enabled, ChannelStatus.Enabled, ChannelStatus.Enabled, ChannelStatus.ManuallyDisabled, ChannelStatus.AutoDisabled),
  groups: fc.subarray(['default', 'vip'], { minLength: 1 }),
  models: fc.subarray(['m1', 'm2'], { minLength: 1 }),
  priority: fc.constantFrom(0, 5, 10),
  weight: fc.integer({ min: 0, max: 5 }),
});
const toInput = (c: GenChannel, i: number): ChannelInput => ({ id: i + 1, status: c.status, group: c.groups, models: c.models, priority: c.priority, weight: c.weight, key: `k-${i + 1}` });
/** A random source over [0, 1) that also hits the edges. */
const randomSource = fc.array(fc.oneof(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), fc.constantFrom(0, 0.9999999999999999, 0.5)), { minLength: 1, maxLength: 20 })
  .map((xs) => { let i = 0; return () => xs[i++ % xs.length]; });

describe('selection invariants (selectChannel)', () => {
  test('never a disabled, excluded (tried / cooling) or ineligible channel; always the best tier; weight 0 only when nothing weighted is left', () => {
    fc.assert(fc.property(
      fc.array(genChannel, { minLength: 1, maxLength: 12 }), fc.constantFrom('default', 'vip'), fc.constantFrom('m1', 'm2'),
      fc.array(fc.boolean(), { minLength: 12, maxLength: 12 }), randomSource, fc.constantFrom('restart', 'descend'), fc.integer({ min: 0, max: 3 }),
      (gen, group, model, excludedFlags, random, strategy, startTier) => {
        const inputs = gen.map(toInput);
        const reg = new ChannelRegistry(inputs);
        const excluded = new Set(inputs.filter((_, i) => excludedFlags[i]).map((c) => c.id));
        const tiers = reg.tiers(group, model);
        const ok = (c: ChannelInput) => c.status === ChannelStatus.Enabled && (c.group as string[]).includes(group) && (c.models as string[]).includes(model) && !excluded.has(c.id);
        const candidates = inputs.filter(ok);
        const pick = selectChannel(tiers, (id) => !excluded.has(id), random, strategy as 'restart' | 'descend', startTier);
        if (candidates.length === 0) {
          expect(pick).toBeUndefined();
          return;
        }
        expect(pick).toBeDefined();
        const chosen = inputs.find((c) => c.id === pick!.id)!;
        expect(ok(chosen)).toBe(true);
        const priorities = [...new Set(inputs.filter((c) => c.status === ChannelStatus.Enabled && (c.group as string[]).includes(group) && (c.models as string[]).includes(model)).map((c) => c.priority ?? 0))].sort((a, b) => b - a);
        const candPriorities = new Set(candidates.map((c) => c.priority ?? 0));
        let expectedPriority: number;
        if (strategy === 'restart' || startTier === 0) {
          expectedPriority = Math.max(...candPriorities);
        } else {
          const start = Math.min(startTier, priorities.length - 1);
          const order = [...priorities.slice(start), ...priorities.slice(0, start).reverse()];
          expectedPriority = order.find((p) => candPriorities.has(p))!;
        }
        expect(chosen.priority).toBe(expectedPriority);
        const sameTier = candidates.filter((c) => c.priority === expectedPriority);
        if (sameTier.some((c) => (c.weight ?? 0) > 0)) expect(chosen.weight).toBeGreaterThan(0);
      },
    ), { numRuns: 4000, seed: SEED });
  });
});

// ---- 5. selection invariants end to end: hostile pins, setup failures, cooldowns, retries --------

interface E2EChannel extends GenChannel {
  setupFails: boolean;
  cooling: boolean;
  upstreamFails: boolean;
}

describe('selection invariants through distributor() and retry()', () => {
  const genE2E = fc.record({
    status: genChannel.map((c) => c.status), groups: fc.subarray(['default', 'vip'], { minLength: 1 }), models: fc.subarray(['m1', 'm2'], { minLength: 1 }),
    priority: fc.constantFrom(0, 5, 10), weight: fc.integer({ min: 0, max: 5 }),
    setupFails: fc.boolean().chain((b) => (b ? fc.boolean() : fc.constant(false))),
    cooling: fc.boolean().chain((b) => (b ? fc.boolean() : fc.constant(false))),
    upstreamFails: fc.boolean(),
  });
  let runs = 0;
  let handedTotal = 0;
  let staleSeen = 0;

  test('every channel handed to the relay is enabled, serving, not cooling, set up and untried; pins are used only when usable', async () => {
    await fc.assert(fc.asyncProperty(
      fc.array(genE2E, { minLength: 1, maxLength: 7 }), fc.option(fc.integer({ min: 1, max: 9 }), { nil: null }),
      fc.constantFrom('default', 'vip', 'auto'), fc.boolean(), fc.constantFrom('m1', 'm2'), fc.integer({ min: 0, max: 3 }), fc.boolean(), fc.integer(),
      async (gen, pin, group, crossGroupRetry, model, times, skipRetry, seed) => {
        runs++;
        const inputs = gen.map((c, i) => toInput(c, i));
        const byId = new Map(inputs.map((c, i) => [c.id, { input: c, gen: gen[i] }]));
        const memory = new MemoryStore();
        // a store whose every lookup answers the generated pin (possibly missing, disabled, ineligible, cooling)
        const store = Object.assign(Object.create(memory) as MemoryStore, { getPin: async () => (pin === null ? null : String(pin)) });
        const rule: AffinityRule = { name: 'prop', modelRegex: ['^m'], keySources: [{ type: 'header', key: 'x-s' }], skipRetryOnFailure: skipRetry, includeUsingGroup: true };
        const mw = distributor({
          channels: inputs, store, logger: memoryLogger(), random: seeded(seed), autoGroups: ['vip', 'default'],
          retry: { times }, affinity: { rules: [rule] }, validate: false,
          setup: (ch) => { if (byId.get(ch.id)!.gen.setupFails) throw new Error(`setup of ${ch.id} failed`); },
        });
        try {
          for (const [id, { gen: g }] of byId) if (g.cooling) await memory.recordFailure(id, { failures: 1, windowMs: 1e6, durationMs: 1e6 }, Date.now());
          await mw.syncHealth();
          const ctx: RequestContext = { group, tokenId: 't', crossGroupRetry };
          const inv = await invoke(mw, { headers: { 'x-s': 'session' }, body: { model }, ctx });
          const walk = group === 'auto' ? ['vip', 'default'] : [group];
          const serves = (c: ChannelInput, groups: string[]) => groups.some((g) => (c.group as string[]).includes(g)) && (c.models as string[]).includes(model);
          const good = (id: number, groups = walk) => {
            const e = byId.get(id);
            return !!e && e.input.status === ChannelStatus.Enabled && serves(e.input, groups) && !e.gen.cooling && !e.gen.setupFails;
          };
          const d = inv.res.locals.distribution!;
          const pinUsable = pin !== null && good(pin);
          if (!inv.next) {
            // 503: no usable channel, or the fallback budget was spent on setup failures
            expect(inv.res.statusCode).toBe(503);
            expect((inv.res.body as { error: { code: string } }).error.code).toBe('model_not_found');
            const anyGood = inputs.some((c) => good(c.id));
            const setupFailures = d.attempts.filter((a) => a.phase === 'setup' && a.channelId !== pin).length;
            expect(!anyGood || setupFailures >= times + 1).toBe(true);
            expect(pinUsable).toBe(false);
            return;
          }
          const handed = [inv.res.locals.channel!.id];
          // the first channel: the pin when usable, else the best tier of the first group with a usable channel
          if (pinUsable) {
            expect(handed[0]).toBe(pin);
            expect(d.affinity).toMatchObject({ hit: true, used: true });
          } else {
            if (pin !== null) {
              staleSeen++;
              expect(d.affinity?.used).toBe(false);
              const e = byId.get(pin);
              const reason = !e ? 'missing' : e.input.status !== ChannelStatus.Enabled ? 'disabled' : !serves(e.input, walk) ? 'ineligible' : e.gen.cooling ? 'cooling' : 'setup_failed';
              expect(d.affinity?.stale).toBe(reason);
            }
            const firstGroup = walk.find((g) => inputs.some((c) => good(c.id, [g])))!;
            const best = Math.max(...inputs.filter((c) => good(c.id, [firstGroup])).map((c) => c.priority ?? 0));
            expect(good(handed[0], [firstGroup])).toBe(true);
            expect(byId.get(handed[0])!.input.priority).toBe(best);
          }
          // the relay: fail while the channel's upstream fails, asking retry() for the next one
          let retries = 0;
          let stop: string | undefined;
          for (;;) {
            const cur = handed[handed.length - 1];
            if (!byId.get(cur)!.gen.upstreamFails) break;
            const next = await d.retry({ status: 500 });
            if (!next) {
              stop = d.stopReason;
              break;
            }
            retries++;
            expect(inv.res.locals.channel).toBe(next);
            const retryGroups = group !== 'auto' ? walk : crossGroupRetry ? walk.slice(walk.indexOf(d.selectedGroup)) : [d.selectedGroup];
            const untried = (id: number) => !handed.includes(id) && !d.tried.slice(0, -1).includes(id);
            expect(good(next.id, retryGroups)).toBe(true);
            expect(untried(next.id)).toBe(true);
            handed.push(next.id);
          }
          handedTotal += handed.length;
          // every handed channel is usable, none twice, all listed in tried
          for (const id of handed) expect(good(id)).toBe(true);
          expect(new Set(handed).size).toBe(handed.length);
          expect(new Set(d.tried).size).toBe(d.tried.length);
          for (const id of handed) expect(d.tried).toContain(id);
          expect(retries).toBeLessThanOrEqual(times);
          if (stop !== undefined) {
            if (pinUsable && skipRetry && handed.length === 1) expect(stop).toBe('skip_rule');
            else if (retries === times) expect(stop).toBe('times');
            else expect(stop).toBe('no_channel');
          }
          inv.res.finish(stop === undefined ? 200 : 500);
          await sleep(0);
          expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
        } finally {
          await mw.shutdown();
          memory.shutdown();
        }
      },
    ), { numRuns: 600, seed: SEED });
    figures.selectionE2E = { runs, handedTotal, stalePins: staleSeen };
  });
});

// ---- 6. weighted picks converge to the weights (chi-square) --------------------------------------

describe('weighted picks converge to the weights', () => {
  test('selectChannel over seeded randomness: chi-square below the p = 1e-6 bound, weight-0 channels never picked next to weighted ones', () => {
    const draws = 20_000;
    let worst = 0;
    fc.assert(fc.property(
      fc.array(fc.integer({ min: 0, max: 20 }), { minLength: 2, maxLength: 8 }), fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }), fc.integer(),
      (weights, excludedFlags, seed) => {
        const inputs = weights.map((w, i): ChannelInput => ({ id: i + 1, models: 'm', weight: w, key: `k${i}` }));
        const excluded = new Set(inputs.filter((_, i) => excludedFlags[i]).map((c) => c.id));
        const live = inputs.filter((c) => !excluded.has(c.id));
        fc.pre(live.length >= 2);
        const tiers = new ChannelRegistry(inputs).tiers('default', 'm');
        const random = seeded(seed);
        const counts = new Map<number, number>();
        for (let i = 0; i < draws; i++) {
          const id = selectChannel(tiers, (x) => !excluded.has(x), random)!.id;
          counts.set(id, (counts.get(id) ?? 0) + 1);
        }
        const sum = live.reduce((s, c) => s + (c.weight ?? 0), 0);
        const expectedP = (c: ChannelInput) => (sum === 0 ? 1 / live.length : (c.weight ?? 0) / sum);
        for (const id of excluded) expect(counts.get(id) ?? 0).toBe(0);
        const positive = live.filter((c) => expectedP(c) > 0);
        for (const c of live) if (expectedP(c) === 0) expect(counts.get(c.id) ?? 0).toBe(0);
        if (positive.length < 2) return;
        const stat = chiSquare(positive.map((c) => counts.get(c.id) ?? 0), positive.map(expectedP));
        const bound = chiSquareCritical(positive.length - 1);
        worst = Math.max(worst, stat / bound);
        expect(stat).toBeLessThan(bound);
      },
    ), { numRuns: 60, seed: SEED });
    figures.chiSquareWorstFractionOfBound = Number(worst.toFixed(3));
  });

  test('through distributor() with the default Math.random: 1:2:3:4 over 8,000 requests, and with two channels excluded by setup failures', async () => {
    const weights = [1, 2, 3, 4];
    const failing = new Set<number>();
    const mw = distributor({
      channels: weights.map((w, i) => ({ id: i + 1, models: 'm', weight: w, key: `k${i}` })),
      logger: memoryLogger(), affinity: { enabled: false }, validate: false,
      setup: (ch) => { if (failing.has(ch.id)) throw new Error('down'); },
    });
    try {
      const run = async (n: number) => {
        const counts = new Map<number, number>();
        for (let i = 0; i < n; i++) {
          const inv = await invoke(mw, { body: { model: 'm' } });
          const id = inv.res.locals.channel!.id;
          counts.set(id, (counts.get(id) ?? 0) + 1);
          inv.res.finish(200);
        }
        return counts;
      };
      const all = await run(8000);
      const stat = chiSquare(weights.map((_, i) => all.get(i + 1) ?? 0), weights.map((w) => w / 10));
      expect(stat).toBeLessThan(chiSquareCritical(3));
      failing.add(4).add(2); // the pick among the rest (1 and 3) must follow 1:3
      const rest = await run(4000);
      expect(rest.get(2) ?? 0).toBe(0);
      expect(rest.get(4) ?? 0).toBe(0);
      const stat2 = chiSquare([rest.get(1) ?? 0, rest.get(3) ?? 0], [0.25, 0.75]);
      expect(stat2).toBeLessThan(chiSquareCritical(1));
      figures.distributorChiSquare = { all: Number(stat.toFixed(2)), allBound: Number(chiSquareCritical(3).toFixed(2)), rest: Number(stat2.toFixed(2)), restBound: Number(chiSquareCritical(1).toFixed(2)), counts: Object.fromEntries(all) };
      expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
    } finally {
      await mw.shutdown();
    }
  });
});
