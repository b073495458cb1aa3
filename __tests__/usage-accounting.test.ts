// Usage and cache accounting through HTTP: relay() reads each answer's usage (JSON and SSE, as it
// passes) and reports it once per request; the mock upstreams keep a prompt cache per key and
// session like a provider; the usage hook, affinityReport(), distributor_tokens_total and
// WRN_DIST_AFFINITY_NO_VALUE follow. Abuse: callers and upstreams cannot inflate the accounting.
import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { request } from 'undici';
import { ChannelStatus, type AffinityRule, type DistributorHooks } from '../lib';
import { distributorAdmin } from '../lib/entry/admin';
import { distributorMetrics } from '../lib/entry/metrics';
import { MODEL, ch, closeClient, ctx, gateway, mock, post, stopAll } from './helpers/relay-kit';
import { memoryLogger } from './helpers/create-app';
import { sample } from './helpers/prometheus';

afterEach(() => stopAll());
afterAll(() => closeClient());

type UsageEvent = Parameters<NonNullable<DistributorHooks['usage']>>[0];

const tick = () => new Promise((r) => setTimeout(r, 10));
const sessRule = (extra: Partial<AffinityRule> = {}): AffinityRule => ({
  name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'body', path: 'prompt_cache_key' }], includeRuleName: true, ...extra,
});
const responsesBody = (session: string, extra: Record<string, unknown> = {}) => ({ model: MODEL, input: 'Summarise the history of the printing press in detail.', prompt_cache_key: session, ...extra });
const chatBody = (session: string, extra: Record<string, unknown> = {}) => ({ model: MODEL, messages: [{ role: 'user', content: 'Hello there, general.' }], prompt_cache_key: session, ...extra });


/** A raw upstream: answers every request with `answer(body)` (status, content-type, payload pieces). */
async function rawUpstream(answer: (body: string, req: http.IncomingMessage) => { status?: number; type: string; pieces: Array<string | Buffer> }) {
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const a = answer(Buffer.concat(chunks).toString('utf8'), req);
      res.writeHead(a.status ?? 200, { 'content-type': a.type });
      // pieces leave as separate writes, so the relay sees events split across chunks
      (async () => {
        for (const p of a.pieces) {
          res.write(p);
          await new Promise((r) => setImmediate(r));
        }
        res.end();
      })().catch(() => res.destroy());
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    }),
  };
}

describe('a session on its channel: miss, then hits with cached tokens', () => {
  test('JSON and streamed answers (Responses, chat with include_usage) report once each; the hook, affinityReport() and the metrics agree', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const events: UsageEvent[] = [];
    const registry = new Registry();
    const metrics = distributorMetrics({ registry });
    const gw = await gateway([ch(1, a, { priority: 10 }), ch(2, b)], {
      affinity: { rules: [sessRule()] },
      on: metrics.merge({ usage: (e) => events.push(e) }),
    });
    const admin = distributorAdmin(gw.mw);

    const r1 = await post(gw.url, responsesBody('s-1'), {}, '/v1/responses');
    expect(r1.status).toBe(200);
    const u1 = r1.json<{ usage: { input_tokens: number; input_tokens_details: { cached_tokens: number } } }>().usage;
    expect(u1.input_tokens_details.cached_tokens).toBe(0); // the mock has not seen the session on this key
    await tick();
    const r2 = await post(gw.url, responsesBody('s-1'), {}, '/v1/responses');
    const u2 = r2.json<{ usage: { input_tokens: number; input_tokens_details: { cached_tokens: number } } }>().usage;
    expect(u2.input_tokens_details.cached_tokens).toBe(Math.floor(0.9 * u2.input_tokens));
    await tick();
    const r3 = await post(gw.url, responsesBody('s-1', { stream: true }), {}, '/v1/responses');
    expect(r3.text).toContain('event: response.completed');
    await tick();
    const r4 = await post(gw.url, chatBody('s-1', { stream: true, stream_options: { include_usage: true } }));
    expect(r4.text).toContain('"choices":[],"usage"');
    await tick();
    // a streamed chat without include_usage carries no usage: nothing is reported
    const r5 = await post(gw.url, chatBody('s-1', { stream: true }));
    expect(r5.status).toBe(200);
    // no prompt_cache_key: no rule, affinity 'none'
    const r6 = await post(gw.url, { model: MODEL, messages: [{ role: 'user', content: 'hi' }] });
    expect(r6.status).toBe(200);

    expect(events.map((e) => [e.channelId, e.rule, e.affinity])).toEqual([
      [1, 'sess', 'miss'], [1, 'sess', 'hit'], [1, 'sess', 'hit'], [1, 'sess', 'hit'], [1, undefined, 'none'],
    ]);
    expect(events[0].usage).toEqual({ inputTokens: u1.input_tokens, outputTokens: 4, cachedTokens: 0 });
    expect(events[1].usage).toEqual({ inputTokens: u2.input_tokens, outputTokens: 4, cachedTokens: u2.input_tokens_details.cached_tokens });
    for (const e of events.slice(1, 4)) expect(e.usage.cachedTokens).toBeGreaterThan(0);
    expect(events[4].usage.cachedTokens).toBe(0);
    expect(events[0].req).toBeDefined();

    const report = admin.affinityReport();
    expect(Object.keys(report)).toEqual(['sess']);
    const hitIn = events.slice(1, 4).reduce((n, e) => n + (e.usage.inputTokens ?? 0), 0);
    const hitCached = events.slice(1, 4).reduce((n, e) => n + (e.usage.cachedTokens ?? 0), 0);
    expect(report.sess).toEqual({
      lookups: 5,
      hits: 4,
      hitRate: 0.8,
      onHits: { reports: 3, inputTokens: hitIn, cachedTokens: hitCached, cachedRatio: hitCached / hitIn },
      onMisses: { reports: 1, inputTokens: u1.input_tokens, cachedTokens: 0, cachedRatio: 0 },
    });
    expect(report.sess.onHits.cachedRatio).toBeGreaterThan(0.85);

    const text = await registry.metrics();
    const tok = (kind: string, affinity: string, rule = 'sess', channel = '1') => sample(text, 'distributor_tokens_total', { rule, channel, kind, affinity });
    expect(tok('input', 'hit')).toBe(hitIn);
    expect(tok('cached', 'hit')).toBe(hitCached);
    expect(tok('output', 'hit')).toBe(12);
    expect(tok('input', 'miss')).toBe(u1.input_tokens);
    expect(tok('cached', 'miss')).toBe(0);
    expect(tok('input', 'none', '')).toBe(events[4].usage.inputTokens);
    expect(tok('cache_write', 'hit')).toBeUndefined(); // OpenAI shapes state no cache writes
    expect(text).not.toContain('s-1');
  });

  test('the pin moves to another channel: that mock has no cache for the session (miss, cached 0), then caches it', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const events: UsageEvent[] = [];
    const gw = await gateway([ch(1, a, { priority: 10 }), ch(2, b)], { affinity: { rules: [sessRule()] }, on: { usage: (e) => events.push(e) } });
    await post(gw.url, responsesBody('s-2'), {}, '/v1/responses');
    await tick();
    await post(gw.url, responsesBody('s-2'), {}, '/v1/responses');
    await tick();
    gw.mw.registry.setStatus(1, ChannelStatus.ManuallyDisabled);
    await post(gw.url, responsesBody('s-2'), {}, '/v1/responses');
    await tick();
    await post(gw.url, responsesBody('s-2'), {}, '/v1/responses');
    expect(events.map((e) => [e.channelId, e.affinity, (e.usage.cachedTokens ?? 0) > 0])).toEqual([
      [1, 'miss', false], [1, 'hit', true], [2, 'miss', false], [2, 'hit', true],
    ]);
  });

  test('the mock caches per API key: the same session on another key starts cold', async () => {
    const m = await mock({ name: 'k' });
    const ask = async (key: string) => {
      const r = await request(`${m.url}/v1/chat/completions`, {
        method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify(chatBody('same')),
      });
      return ((await r.body.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage.prompt_tokens_details.cached_tokens;
    };
    expect(await ask('key-1')).toBe(0);
    expect(await ask('key-1')).toBeGreaterThan(0);
    expect(await ask('key-2')).toBe(0);
    expect(await ask('key-2')).toBeGreaterThan(0);
    // metadata.user_id (Anthropic-style session) and the X-Claude-Code-Session-Id header count too
    const viaMeta = async () => {
      const r = await request(`${m.url}/v1/chat/completions`, {
        method: 'POST', headers: { authorization: 'Bearer key-3', 'content-type': 'application/json' },
        body: JSON.stringify({ model: MODEL, messages: [], metadata: { user_id: 'u-1' } }),
      });
      return ((await r.body.json()) as { usage: { prompt_tokens_details: { cached_tokens: number } } }).usage.prompt_tokens_details.cached_tokens;
    };
    expect(await viaMeta()).toBe(0);
    expect(await viaMeta()).toBeGreaterThan(0);
  });
});

describe('WRN_DIST_AFFINITY_NO_VALUE', () => {
  test('logged once when hits cache less than minCachedRatio after evaluateAfter reports', async () => {
    const up = await mock({ name: 'nocache', promptCache: false });
    const logger = memoryLogger();
    const gw = await gateway([ch(1, up)], { logger, affinity: { rules: [sessRule({ name: 'no-value rule', minCachedRatio: 0.5, evaluateAfter: 5 })] } });
    const warnings = () => logger.lines.filter((l) => l.message.startsWith('WRN_DIST_AFFINITY_NO_VALUE'));
    for (let i = 0; i < 5; i++) {
      await post(gw.url, responsesBody('s-w'), {}, '/v1/responses');
      await tick();
    }
    // 1 miss + 4 hits: not judged yet
    expect(warnings()).toHaveLength(0);
    expect(distributorAdmin(gw.mw).affinityReport()['no-value rule'].onHits).toMatchObject({ reports: 4, cachedTokens: 0, cachedRatio: 0 });
    for (let i = 0; i < 6; i++) {
      await post(gw.url, responsesBody('s-w'), {}, '/v1/responses');
      await tick();
    }
    expect(warnings()).toHaveLength(1);
    expect(warnings()[0].message).toContain('no-value rule');
    expect(warnings()[0].meta).toMatchObject({ code: 'WRN_DIST_AFFINITY_NO_VALUE' });
  });

  test('not logged when the upstream caches (the mocks by default)', async () => {
    const up = await mock({ name: 'cache' });
    const logger = memoryLogger();
    const gw = await gateway([ch(1, up)], { logger, affinity: { rules: [sessRule({ name: 'valued rule', minCachedRatio: 0.5, evaluateAfter: 5 })] } });
    for (let i = 0; i < 8; i++) {
      await post(gw.url, responsesBody('s-v'), {}, '/v1/responses');
      await tick();
    }
    expect(logger.lines.filter((l) => l.message.startsWith('WRN_DIST_AFFINITY_NO_VALUE'))).toHaveLength(0);
  });
});

describe('what is reported, and when', () => {
  test('a retried request reports once, for the channel that served', async () => {
    const bad = await mock({ name: 'bad', failRate: 1, failStatus: 500 });
    const good = await mock({ name: 'good' });
    const events: UsageEvent[] = [];
    const gw = await gateway([ch(1, bad, { priority: 10 }), ch(2, good)], { retry: { times: 2 }, on: { usage: (e) => events.push(e) } });
    const r = await post(gw.url, chatBody('x'));
    expect(r.status).toBe(200);
    expect(events.map((e) => e.channelId)).toEqual([2]);
  });

  test('non-2xx answers are not reported, even with a usage body', async () => {
    const up = await rawUpstream(() => ({ status: 400, type: 'application/json', pieces: [JSON.stringify({ error: { message: 'bad' }, usage: { prompt_tokens: 50 } })] }));
    const events: UsageEvent[] = [];
    const gw = await gateway([ch(1, up.url)], { on: { usage: (e) => events.push(e) } });
    try {
      expect((await post(gw.url, chatBody('x'))).status).toBe(400);
      expect(events).toEqual([]);
    } finally {
      await up.close();
    }
  });

  test('Anthropic and Gemini answers through the relay (JSON and SSE)', async () => {
    const anthropicSse = [
      'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":900,"cache_creation_input_tokens":5,"output_tokens":1}}}\n\n',
      'event: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"hi"}}\n\n',
      'event: message_delta\r\ndata: {"type":"message_delta","usage":{"output_tokens":42}}\r\n\r\n',
    ];
    const up = await rawUpstream((body) => {
      if (body.includes('anthropic-sse')) return { type: 'text/event-stream', pieces: anthropicSse.join('').match(/[\s\S]{1,17}/g) as string[] };
      if (body.includes('anthropic-json')) return { type: 'application/json', pieces: [JSON.stringify({ type: 'message', usage: { input_tokens: 3, cache_read_input_tokens: 7, output_tokens: 2 } })] };
      if (body.includes('gemini-sse')) return { type: 'text/event-stream', pieces: ['data: {"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":1}}\n\n', 'data: {"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":6,"cachedContentTokenCount":64}}\n\n'] };
      return { type: 'application/json; charset=utf-8', pieces: ['[{"usageMetadata":{"promptTokenCount":8}},', '{"usageMetadata":{"promptTokenCount":8,"candidatesTokenCount":2}}]'] };
    });
    const events: UsageEvent[] = [];
    const gw = await gateway([ch(1, up.url)], { on: { usage: (e) => events.push(e) } });
    try {
      for (const kind of ['anthropic-sse', 'anthropic-json', 'gemini-sse', 'gemini-json']) expect((await post(gw.url, { model: MODEL, kind })).status).toBe(200);
      expect(events.map((e) => e.usage)).toEqual([
        { inputTokens: 915, cachedTokens: 900, cacheWriteTokens: 5, outputTokens: 42 },
        { inputTokens: 10, cachedTokens: 7, outputTokens: 2 },
        { inputTokens: 100, cachedTokens: 64, outputTokens: 6 },
        { inputTokens: 8, outputTokens: 2 },
      ]);
    } finally {
      await up.close();
    }
  });

  test('relay({ reportUsage: false }) leaves reporting to the gateway', async () => {
    const up = await mock();
    const events: UsageEvent[] = [];
    const gw = await gateway([ch(1, up)], { on: { usage: (e) => events.push(e) } }, { reportUsage: false });
    expect((await post(gw.url, chatBody('x'))).status).toBe(200);
    expect(events).toEqual([]);
  });
});

describe('abuse', () => {
  test('a caller cannot inflate the accounting: usage in its own body or echoed by the model is not read; one report per request', async () => {
    // an upstream that echoes the caller's text into the answer (JSON and SSE), with several
    // usage-looking events, and its own real usage last
    const up = await rawUpstream((body) => {
      const echo = body.slice(0, 2000);
      if (body.includes('"stream":true')) {
        return {
          type: 'text/event-stream',
          pieces: [
            `data: ${JSON.stringify({ choices: [{ delta: { content: echo } }], usage: null })}\n\n`,
            `data: ${JSON.stringify({ choices: [{ delta: { content: 'data: {"usage":{"prompt_tokens":1000000}}\n\n' } }] })}\n\n`,
            `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 20, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 10 } } })}\n\n`,
            'data: [DONE]\n\n',
          ],
        };
      }
      return { type: 'application/json', pieces: [JSON.stringify({ choices: [{ message: { content: echo } }], usage: { prompt_tokens: 20, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 10 } } })] };
    });
    const events: UsageEvent[] = [];
    const rules: AffinityRule[] = [
      sessRule({ name: 'tenant-a', pathRegex: ['/v1/chat/completions'], includeUsingGroup: true }),
      sessRule({ name: 'tenant-b', pathRegex: ['/v1/responses'], includeUsingGroup: true }),
    ];
    const gw = await gateway([ch(1, up.url, { group: 'a,b' })], { affinity: { rules }, on: { usage: (e) => events.push(e) } });
    try {
      const injected = 'ignore this {"usage":{"prompt_tokens":1000000,"prompt_tokens_details":{"cached_tokens":1000000}}}\n\ndata: {"usage":{"prompt_tokens":999999}}\n\n';
      for (let i = 0; i < 3; i++) {
        const r = await post(gw.url, { ...chatBody('victim-session'), stream: i === 1, usage: { prompt_tokens: 1e9 }, messages: [{ role: 'user', content: injected }] }, ctx({ group: 'a' }));
        expect(r.status).toBe(200);
        await tick();
      }
      expect(events).toHaveLength(3);
      for (const e of events) expect(e.usage).toEqual({ inputTokens: 20, outputTokens: 2, cachedTokens: 10 });
      const report = distributorAdmin(gw.mw).affinityReport();
      // the other tenant's rule saw nothing; this one exactly its own three requests
      expect(report['tenant-b']).toBeUndefined();
      expect(report['tenant-a'].lookups).toBe(3);
      expect(report['tenant-a'].onHits.reports + report['tenant-a'].onMisses.reports).toBe(3);
      expect(report['tenant-a'].onHits.inputTokens + report['tenant-a'].onMisses.inputTokens).toBe(60);
      // the same session value from another group is its own pin: a miss, counted once
      await post(gw.url, chatBody('victim-session'), ctx({ group: 'b' }));
      const after = distributorAdmin(gw.mw).affinityReport()['tenant-a'];
      expect(after.lookups).toBe(4);
      expect(after.onMisses.reports).toBe(report['tenant-a'].onMisses.reports + 1);
    } finally {
      await up.close();
    }
  });

  test('absurd usage from an upstream (1e308, negative, NaN strings, cached > input) is ignored or clamped; the answer is untouched', async () => {
    const up = await mock({ name: 'absurd', usageOverride: { prompt_tokens: 1e308, completion_tokens: -5, prompt_tokens_details: { cached_tokens: 'NaN' } } });
    const events: UsageEvent[] = [];
    const registry = new Registry();
    const metrics = distributorMetrics({ registry });
    const gw = await gateway([ch(1, up)], { affinity: { rules: [sessRule()] }, on: metrics.merge({ usage: (e) => events.push(e) }) });
    const r = await post(gw.url, chatBody('s-abs'));
    expect(r.status).toBe(200);
    expect(r.json<{ usage: { prompt_tokens: number } }>().usage.prompt_tokens).toBe(1e308); // passed through as sent
    const s = await post(gw.url, chatBody('s-abs', { stream: true, stream_options: { include_usage: true } }));
    expect(s.status).toBe(200);
    expect(s.text).toContain('data: [DONE]');
    expect(events).toEqual([]); // nothing usable: no report
    up.set({ usageOverride: { prompt_tokens: 100, completion_tokens: 1e308, prompt_tokens_details: { cached_tokens: 5000 } } });
    await post(gw.url, chatBody('s-abs'));
    expect(events.map((e) => e.usage)).toEqual([{ inputTokens: 100, cachedTokens: 100 }]);
    const text = await registry.metrics();
    expect(text).not.toMatch(/distributor_tokens_total\{[^}]*\} (-|NaN|Inf|\d\.\d+e\+)/);
    // a hostile stream: garbage bytes, an event over 64 KiB, then real usage; the client gets it byte for byte
    const pieces = [Buffer.from([0xff, 0x00, 0x0d, 0x0a, 0x0a]), `data: {"usage":{"prompt_tokens":7},"pad":"${'p'.repeat(100_000)}"}\n\n`, 'data: {"usage":{"prompt_tokens":3}}\n\n'];
    const raw = await rawUpstream(() => ({ type: 'text/event-stream', pieces }));
    const gw2 = await gateway([ch(1, raw.url)], { on: { usage: (e) => events.push(e) } });
    try {
      const h = await post(gw2.url, chatBody('x', { stream: true }));
      expect(h.status).toBe(200);
      expect(Buffer.from(h.text, 'utf8').length).toBeGreaterThan(100_000);
      expect(h.text.endsWith('data: {"usage":{"prompt_tokens":3}}\n\n')).toBe(true);
      expect(events[events.length - 1].usage).toEqual({ inputTokens: 3 });
    } finally {
      await raw.close();
    }
  });
});

describe('reportUsage() from a relay of your own', () => {
  test('once per request (a second call is ignored) and counts outside 0..1e9 count as 0', async () => {
    const express = (await import('express')).default;
    const supertest = (await import('supertest')).default;
    const { distributor } = await import('../lib');
    const seen: Array<{ input?: number; cached?: number }> = [];
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-5', key: 'sk-own-relay-1' }], logger: memoryLogger(), on: { usage: (e) => seen.push({ input: e.usage.inputTokens, cached: e.usage.cachedTokens }) } });
    const app = express();
    app.use(express.json());
    app.use(mw);
    app.use((req, res) => {
      const d = res.locals.distribution!;
      d.reportUsage({ inputTokens: Number(req.headers['x-input']), cachedTokens: 10 });
      d.reportUsage({ inputTokens: 999, cachedTokens: 999 }); // a second report of the same request
      res.json({});
    });
    await supertest(app).post('/v1/responses').set('x-input', '100').send({ model: 'gpt-5', prompt_cache_key: 's-own-1' }).expect(200);
    await supertest(app).post('/v1/responses').set('x-input', '1e308').send({ model: 'gpt-5', prompt_cache_key: 's-own-1' }).expect(200);
    expect(seen).toEqual([{ input: 100, cached: 10 }, { input: 0, cached: 10 }]);
    const report = distributorAdmin(mw).affinityReport()['codex cli trace'];
    expect(report.onMisses).toMatchObject({ reports: 1, inputTokens: 100, cachedTokens: 10 });
    expect(report.onHits).toMatchObject({ reports: 1, inputTokens: 0 });
    await mw.shutdown();
  });
});
