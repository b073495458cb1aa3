// relay() over HTTP against real mock upstreams on loopback: forwarding, retry scenarios,
// streaming before and after the commit point, affinity, retry budget, Retry-After, secrets.
import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import { ChannelStatus } from '../lib';
import { CLIENT_TOKEN, MODEL, ch, closeClient, closedPortUrl, ctx, gateway, mock, post, stopAll } from './helpers/relay-kit';

const chat = (extra: Record<string, unknown> = {}) => ({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], ...extra });
const sseData = (text: string) => text.split('\n\n').filter(Boolean);

afterEach(() => stopAll());
afterAll(() => closeClient());

describe('forwarding', () => {
  test('sends the raw body with the channel key to baseUrl (one /v1), and streams the answer back', async () => {
    const up = await mock({ name: 'alpha' });
    const gw = await gateway([ch(1, up)], {}, { forwardHeaders: ['X-Custom'] });
    const raw = '{ "model" : "gpt-4o-mini",   "messages": [{"role":"user","content":"hi"}] }';
    const r = await post(gw.url, raw, { ...ctx({ tokenId: 1 }), 'x-custom': 'kept', cookie: 'session=abc', 'x-api-key': 'client-key-xyz', 'user-agent': 'test-agent/1' });
    expect(r.status).toBe(200);
    expect(r.json<{ choices: Array<{ message: { content: string } }> }>().choices[0].message.content).toBe('Hello from alpha');
    expect(r.headers['content-type']).toBe('application/json');
    const last = up.stats.last!;
    expect(last.path).toBe('/v1/chat/completions');
    expect(last.body).toBe(raw); // byte for byte: the unchanged body is not re-serialised
    expect(last.headers.authorization).toBe('Bearer sk-upstream-key-1-secret');
    expect(last.headers['x-custom']).toBe('kept'); // named in forwardHeaders
    expect(last.headers['user-agent']).toBe('test-agent/1'); // on the default allowlist
    expect(last.headers['content-type']).toBe('application/json');
    expect(last.headers.cookie).toBeUndefined();
    expect(last.headers['x-api-key']).toBeUndefined();
    expect(last.headers['x-test-context']).toBeUndefined(); // neither allowlisted nor named
    expect(gw.last().tried).toEqual([1]);
    expect(gw.last().attempts).toEqual([]);
  });

  test('a body replaced after the distributor is re-serialised', async () => {
    const up = await mock();
    const gw = await gateway([ch(1, up)], {}, {}, (req, _res, next) => {
      req.body = { ...(req.body as object), max_tokens: 7 };
      next();
    });
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(JSON.parse(up.stats.last!.body)).toEqual({ ...chat(), max_tokens: 7 });
    expect(up.stats.last!.headers['content-length']).toBe(String(Buffer.byteLength(up.stats.last!.body)));
  });

  test('a base URL without /v1 gets the full path; query strings are kept; the headers hook can add headers', async () => {
    const up = await mock();
    const gw = await gateway([ch(1, up, { baseUrl: up.url })], {}, {
      headers: (h, { channel, attempt }) => {
        h['x-channel'] = String(channel.id);
        h['x-attempt'] = String(attempt);
      },
    });
    expect((await post(gw.url, chat(), {}, '/v1/chat/completions?api-version=2024')).status).toBe(200);
    expect(up.stats.last!.path).toBe('/v1/chat/completions?api-version=2024');
    expect(up.stats.last!.headers['x-channel']).toBe('1');
    expect(up.stats.last!.headers['x-attempt']).toBe('1');
  });

  test('upstream set-cookie is dropped; responseHeaders can drop more', async () => {
    const http = await import('node:http');
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'application/json', 'set-cookie': '__cf_bm=abc; path=/', 'openai-organization': 'org-secret', 'x-request-id': 'req-1' });
        res.end('{"ok":true}');
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const { port } = server.address() as import('node:net').AddressInfo;
      const gw = await gateway([ch(1, `http://127.0.0.1:${port}`)], {}, {
        responseHeaders: (h, { status, channel }) => {
          expect(status).toBe(200);
          expect(channel.id).toBe(1);
          delete h['openai-organization'];
        },
      });
      const r = await post(gw.url, chat());
      expect(r.status).toBe(200);
      expect(r.text).toBe('{"ok":true}');
      expect(r.headers['set-cookie']).toBeUndefined();
      expect(r.headers['openai-organization']).toBeUndefined();
      expect(r.headers['x-request-id']).toBe('req-1');
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  test('the path option maps the upstream path', async () => {
    const up = await mock();
    const gw = await gateway([ch(1, up)], {}, { path: () => '/responses' });
    const r = await post(gw.url, { model: MODEL, input: 'hi' });
    expect(r.status).toBe(200);
    expect(up.stats.last!.path).toBe('/v1/responses');
    expect(r.json<{ object: string }>().object).toBe('response');
  });

  test('SSE streams pass through unchanged', async () => {
    const up = await mock({ name: 'beta', chunkGapMs: 5 });
    const gw = await gateway([ch(1, up)]);
    const r = await post(gw.url, chat({ stream: true }));
    expect(r.status).toBe(200);
    expect(String(r.headers['content-type'])).toMatch(/^text\/event-stream/);
    const events = sseData(r.text);
    expect(events).toHaveLength(6);
    expect(events[5]).toBe('data: [DONE]');
    expect(r.text).toContain(' beta');
    expect(r.aborted).toBeUndefined();
  });

  test('without distributor() the relay answers 500 no_channel', async () => {
    const express = (await import('express')).default;
    const { relay } = await import('../lib/entry/relay');
    const fwd = relay();
    const app = express();
    app.post('/v1/chat/completions', fwd);
    const server = app.listen(0, '127.0.0.1');
    await new Promise((r) => server.once('listening', r));
    try {
      const { port } = server.address() as import('node:net').AddressInfo;
      const r = await post(`http://127.0.0.1:${port}`, chat());
      expect(r.status).toBe(500);
      expect(r.json()).toMatchObject({ error: { code: 'no_channel' } });
    } finally {
      server.closeAllConnections();
      server.close();
      await fwd.close();
    }
  });
});

describe('retry before the commit point', () => {
  test('429, then success on another channel', async () => {
    const limited = await mock({ name: 'limited', failRate: 1, failStatus: 429 });
    const ok = await mock({ name: 'ok' });
    const gw = await gateway([ch(1, limited, { priority: 10 }), ch(2, ok)]);
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from ok');
    const d = gw.last();
    expect(d.tried).toEqual([1, 2]);
    expect(d.attempts).toEqual([{ channelId: 1, phase: 'upstream', status: 429, reason: 'mock limited failure (429)' }]);
    expect(d.stopReason).toBeUndefined();
    expect(limited.stats.hits).toBe(1);
    expect(gw.errors).toMatchObject([{ channelId: 1, attempt: 1, status: 429, code: 'upstream_status', committed: false }]);
  });

  test('persistent 5xx: retry.times bounds the attempts and the last error is returned', async () => {
    const mocks = await Promise.all([1, 2, 3, 4].map((i) => mock({ name: `m${i}`, failRate: 1, failStatus: 500 + i })));
    const gw = await gateway(mocks.map((m, i) => ch(i + 1, m, { priority: 10 - i })), { retry: { times: 2, statusCodes: '500-599' } });
    const r = await post(gw.url, chat());
    expect(r.status).toBe(503);
    expect(r.json()).toEqual({ error: { message: 'mock m3 failure (503)', type: 'server_error', param: null, code: null } });
    expect(mocks.map((m) => m.stats.hits)).toEqual([1, 1, 1, 0]);
    const d = gw.last();
    expect(d.attempts.map((a) => a.status)).toEqual([501, 502, 503]);
    expect(d.stopReason).toBe('times');
  });

  test('a non-retryable status (400) is returned at once', async () => {
    const bad = await mock({ failRate: 1, failStatus: 400, failMessage: 'bad request: messages missing' });
    const other = await mock();
    const gw = await gateway([ch(1, bad, { priority: 1 }), ch(2, other)]);
    const r = await post(gw.url, chat());
    expect(r.status).toBe(400);
    expect(r.json<{ error: { message: string } }>().error.message).toBe('bad request: messages missing');
    expect(other.stats.hits).toBe(0);
    expect(gw.last().stopReason).toBe('status');
  });

  test('connection refused moves on; when every channel refuses the client gets 502 without addresses', async () => {
    const closed = await closedPortUrl();
    const ok = await mock({ name: 'ok' });
    const gw = await gateway([ch(1, closed, { priority: 10 }), ch(2, ok)]);
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from ok');
    expect(gw.last().attempts).toEqual([{ channelId: 1, phase: 'upstream', reason: 'Upstream refused the connection' }]);

    const closed2 = await closedPortUrl();
    const gw2 = await gateway([ch(1, closed, { priority: 1 }), ch(2, closed2)]);
    const r2 = await post(gw2.url, chat());
    expect(r2.status).toBe(502);
    expect(r2.json()).toEqual({ error: { message: 'Upstream refused the connection', type: 'upstream_error', code: 'upstream_connection_error' } });
    expect(r2.text).not.toContain('127.0.0.1');
    expect(gw2.last().stopReason).toBe('no_channel');
  });

  test('a timeout (no headers within timeoutMs) moves on; when all time out the client gets 504', async () => {
    const slow = await mock({ name: 'slow', delayMs: 3000 });
    const ok = await mock({ name: 'ok' });
    const gw = await gateway([ch(1, slow, { priority: 10 }), ch(2, ok)], {}, { timeoutMs: 150 });
    const t0 = Date.now();
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from ok');
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(gw.last().attempts[0]).toMatchObject({ channelId: 1, reason: 'Upstream timed out before sending response headers' });

    const gw2 = await gateway([ch(1, slow)], {}, { timeoutMs: 150 });
    const r2 = await post(gw2.url, chat());
    expect(r2.status).toBe(504);
    expect(r2.json()).toMatchObject({ error: { type: 'upstream_error', code: 'upstream_timeout' } });
  });

  test('a stream cut before the first byte is retried on another channel', async () => {
    const cutter = await mock({ name: 'cutter', cutAfterChunks: 0 });
    const ok = await mock({ name: 'ok' });
    const gw = await gateway([ch(1, cutter, { priority: 10 }), ch(2, ok)]);
    const r = await post(gw.url, chat({ stream: true }));
    expect(r.status).toBe(200);
    expect(r.aborted).toBeUndefined();
    expect(sseData(r.text).pop()).toBe('data: [DONE]');
    expect(r.text).toContain(' ok');
    expect(cutter.stats.cut).toBe(1);
    expect(gw.last().attempts).toEqual([{ channelId: 1, phase: 'upstream', reason: 'Upstream closed the stream before sending data' }]);
  });

  test('a JSON body cut before the first byte is retried too', async () => {
    const cutter = await mock({ name: 'cutter', cutAfterChunks: 0 });
    const ok = await mock({ name: 'ok' });
    const gw = await gateway([ch(1, cutter, { priority: 10 }), ch(2, ok)]);
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from ok');
  });

  test('a connection dropped without an answer is retried', async () => {
    const dropper = await mock({ dropConnection: true });
    const ok = await mock({ name: 'ok' });
    const gw = await gateway([ch(1, dropper, { priority: 10 }), ch(2, ok)]);
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(dropper.stats.dropped).toBe(1);
  });
});

describe('after the commit point', () => {
  test('an SSE stream cut mid-answer ends with an explicit error event, not a clean success', async () => {
    const cutter = await mock({ name: 'cutter', cutAfterChunks: 2, chunkGapMs: 5 });
    const other = await mock({ name: 'other' });
    const gw = await gateway([ch(1, cutter, { priority: 10 }), ch(2, other)], { health: { cooldown: { failures: 1, windowMs: 60_000, durationMs: 60_000 } } });
    const r = await post(gw.url, chat({ stream: true }));
    expect(r.status).toBe(200); // already on the wire
    const events = sseData(r.text);
    expect(events).toHaveLength(3);
    expect(events[0]).toMatch(/^data: /);
    expect(events[1]).toMatch(/^data: /);
    expect(events[2]).toMatch(/^event: error\ndata: /);
    const err = JSON.parse(events[2].split('\ndata: ')[1]) as { error: { code: string; type: string } };
    expect(err.error).toMatchObject({ type: 'upstream_error', code: 'stream_interrupted' });
    expect(r.text).not.toContain('[DONE]');
    expect(other.stats.hits).toBe(0); // no retry after the commit point
    expect(gw.errors).toMatchObject([{ channelId: 1, code: 'stream_interrupted', committed: true }]);
    // the distributor saw a failure: attempt recorded, health fed (cooldown after one failure)
    expect(gw.last().attempts).toEqual([{ channelId: 1, phase: 'upstream', reason: 'Upstream stream was interrupted; the response is incomplete' }]);
    await new Promise((r2) => setTimeout(r2, 20));
    expect(gw.mw.isCoolingDown(1)).toBe(true);
    const next = await post(gw.url, chat({ stream: true }));
    expect(next.text).toContain(' other');
  });

  test('a partial SSE event is never forwarded before the error event', async () => {
    // an upstream whose events arrive split across chunks, then cut inside an event
    const http = await import('node:http');
    const server = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.write('data: {"a":1}\n\ndata: {"b":');
        setTimeout(() => res.socket?.destroy(), 30);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const { port } = server.address() as import('node:net').AddressInfo;
      const gw = await gateway([ch(1, `http://127.0.0.1:${port}`)]);
      const r = await post(gw.url, chat({ stream: true }));
      const events = sseData(r.text);
      expect(events[0]).toBe('data: {"a":1}');
      expect(events[1]).toMatch(/^event: error\n/);
      expect(r.text).not.toContain('{"b":');
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  test('a JSON body cut mid-answer aborts the response', async () => {
    const cutter = await mock({ cutAfterChunks: 1 });
    const other = await mock();
    const gw = await gateway([ch(1, cutter, { priority: 10 }), ch(2, other)]);
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(r.aborted).toBeDefined();
    expect(() => JSON.parse(r.text)).toThrow();
    expect(other.stats.hits).toBe(0);
    expect(gw.errors).toMatchObject([{ code: 'stream_interrupted', committed: true }]);
  });

  test('a client that goes away mid-stream aborts the upstream request', async () => {
    const slow = await mock({ chunkGapMs: 200 });
    const gw = await gateway([ch(1, slow)]);
    const { request } = await import('undici');
    const ac = new AbortController();
    const r = await request(`${gw.url}/v1/chat/completions`, {
      method: 'POST', signal: ac.signal, headers: { 'content-type': 'application/json' }, body: JSON.stringify(chat({ stream: true })),
    });
    await new Promise<void>((resolve) => r.body.once('data', () => resolve()));
    ac.abort();
    r.body.on('error', () => {});
    await new Promise((res) => setTimeout(res, 400));
    expect(slow.stats.ok).toBe(0); // the upstream never finished its stream
    expect(gw.errors).toEqual([]);
  });
});

describe('affinity, budget, Retry-After', () => {
  test('a pinned channel disabled mid-session: the next request goes elsewhere without an error', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const gw = await gateway([ch(1, a), ch(2, b)], { random: () => 0 });
    const body = { model: MODEL, input: 'hi', prompt_cache_key: 'session-42' };
    const who = (text: string) => /Hello from (\w+)/.exec(text)?.[1];
    const r1 = await post(gw.url, body, {}, '/v1/responses');
    expect(r1.status).toBe(200);
    const first = who(r1.text);
    const firstId = first === 'a' ? 1 : 2;
    await new Promise((r) => setTimeout(r, 20));
    const r2 = await post(gw.url, body, {}, '/v1/responses');
    expect(who(r2.text)).toBe(first);
    expect(gw.last().affinity).toMatchObject({ hit: true, used: true });

    gw.mw.registry.setStatus(firstId, ChannelStatus.ManuallyDisabled);
    const r3 = await post(gw.url, body, {}, '/v1/responses');
    expect(r3.status).toBe(200);
    expect(who(r3.text)).not.toBe(first);
    expect(gw.last().affinity).toMatchObject({ hit: true, used: false, stale: 'disabled', cleared: true });
    await new Promise((r) => setTimeout(r, 20));
    const r4 = await post(gw.url, body, {}, '/v1/responses');
    expect(who(r4.text)).toBe(who(r3.text));
    expect(gw.last().affinity).toMatchObject({ hit: true, used: true });
  });

  test('a pinned channel that fails with 429 is left for another channel (skipRetryOnFailure off) and loses its pin', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const { defaultAffinityRules } = await import('../lib');
    const rules = defaultAffinityRules().map((r) => ({ ...r, skipRetryOnFailure: false }));
    const gw = await gateway([ch(1, a, { priority: 1 }), ch(2, b)], { affinity: { rules } });
    const body = { model: MODEL, input: 'hi', prompt_cache_key: 'session-7' };
    expect((await post(gw.url, body, {}, '/v1/responses')).text).toContain('Hello from a');
    await new Promise((r) => setTimeout(r, 20));
    a.set({ failRate: 1, failStatus: 429 });
    const r = await post(gw.url, body, {}, '/v1/responses');
    expect(r.status).toBe(200);
    expect(r.text).toContain('Hello from b');
    expect(gw.last().tried).toEqual([1, 2]);
  });

  test('retry budget: concurrent failures beyond the budget stop with stopReason "budget"', async () => {
    const dead = await mock({ name: 'dead', failRate: 1, failStatus: 500 });
    const slowOk = await mock({ name: 'slow', delayMs: 600 });
    const gw = await gateway([ch(1, dead, { priority: 10 }), ch(2, slowOk)], { retry: { budget: { percent: 1, minConcurrent: 1 } } });
    const firstP = post(gw.url, chat());
    // wait until the first request is retrying on the slow channel
    for (let i = 0; i < 100 && slowOk.stats.hits === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(slowOk.stats.hits).toBe(1);
    const rest = await Promise.all([post(gw.url, chat()), post(gw.url, chat()), post(gw.url, chat())]);
    for (const r of rest) {
      expect(r.status).toBe(500);
      expect(r.json<{ error: { message: string } }>().error.message).toBe('mock dead failure (500)');
    }
    const first = await firstP;
    expect(first.status).toBe(200);
    expect(gw.seen.map((d) => d.stopReason)).toEqual([undefined, 'budget', 'budget', 'budget']);
    expect(slowOk.stats.hits).toBe(1);
    // the budget frees up once the retrying request finished
    const after = await post(gw.url, chat());
    expect(after.status).toBe(200);
  });

  test('Retry-After within maxRetryAfterMs: the only channel is retried after the wait', async () => {
    const only = await mock({ name: 'only', failFirst: 1, failStatus: 429, retryAfter: '1' });
    const gw = await gateway([ch(1, only)], { retry: { maxRetryAfterMs: 2000 } });
    const t0 = Date.now();
    const r = await post(gw.url, chat());
    expect(r.status).toBe(200);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(950);
    expect(only.stats.hits).toBe(2);
    expect(gw.last().trace.join(' ')).toContain('wait 1000ms ch=1');
  });

  test('Retry-After above maxRetryAfterMs: the 429 and its Retry-After reach the client', async () => {
    const only = await mock({ name: 'only', failRate: 1, failStatus: 429, retryAfter: '30' });
    const gw = await gateway([ch(1, only)], { retry: { maxRetryAfterMs: 2000 } });
    const t0 = Date.now();
    const r = await post(gw.url, chat());
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('30');
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(gw.last().stopReason).toBe('no_channel');
    expect(gw.errors[0].retryAfterMs).toBe(30_000);
  });
});

describe('secrets', () => {
  test('neither the channel key nor the client token reaches the client, even when the upstream echoes it', async () => {
    const echo = await mock({ failRate: 1, failStatus: 401, failMessage: 'Incorrect API key provided: {auth}' });
    const echo2 = await mock({ failRate: 1, failStatus: 500, failMessage: 'upstream saw {auth}' });
    const gw = await gateway([ch(1, echo, { priority: 1 }), ch(2, echo2)]);
    const r = await post(gw.url, chat());
    expect(echo.stats.last!.headers.authorization).toBe('Bearer sk-upstream-key-1-secret');
    expect(r.status).toBe(500);
    for (const secret of ['sk-upstream-key-1-secret', 'sk-upstream-key-2-secret', CLIENT_TOKEN]) {
      expect(r.text).not.toContain(secret);
      expect(JSON.stringify(gw.last().attempts)).not.toContain(secret);
      expect(JSON.stringify(gw.errors.map(({ req: _req, ...e }) => e))).not.toContain(secret);
    }
    expect(r.text).toContain('[REDACTED]');
  });

  test('the client token is never sent upstream', async () => {
    const up = await mock();
    const gw = await gateway([ch(1, up, { key: undefined })]);
    await post(gw.url, chat(), ctx({ group: 'default' }));
    expect(up.stats.last!.headers.authorization).toBeUndefined();
    expect(JSON.stringify(up.stats.last!.headers)).not.toContain(CLIENT_TOKEN);
  });
});

describe('request bodies the distributor did not read', () => {
  test('a multipart upload is streamed upstream as is, and not retried (it cannot be replayed)', async () => {
    const http = await import('node:http');
    let hits = 0;
    const server = http.createServer((req, res) => {
      hits++;
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('latin1');
        if (req.headers['x-fail']) {
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end('{"error":{"message":"boom","type":"server_error"}}');
          return;
        }
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ path: req.url, ct: req.headers['content-type'], cl: req.headers['content-length'], body }));
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const { port } = server.address() as import('node:net').AddressInfo;
      const other = await mock();
      const gw = await gateway([ch(1, `http://127.0.0.1:${port}`, { models: 'whisper-1', priority: 1 }), ch(2, other, { models: 'whisper-1' })], {}, { forwardHeaders: ['x-fail'] });
      const boundary = 'XyZ';
      const form = `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\nRIFF....\r\n--${boundary}--\r\n`;
      const headers = { 'content-type': `multipart/form-data; boundary=${boundary}` };
      const r = await post(gw.url, form, headers, '/v1/audio/transcriptions');
      expect(r.status).toBe(200);
      expect(r.json()).toEqual({ path: '/v1/audio/transcriptions', ct: headers['content-type'], cl: String(form.length), body: form });

      const failed = await post(gw.url, form, { ...headers, 'x-fail': '1' }, '/v1/audio/transcriptions');
      expect(failed.status).toBe(500);
      expect(failed.json<{ error: { message: string } }>().error.message).toBe('boom');
      expect(other.stats.hits).toBe(0);
      expect(hits).toBe(2);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});

describe('helpers', () => {
  test('upstreamPath: a trailing version segment of the base URL is not repeated', async () => {
    const { upstreamPath } = await import('../lib/relay/target');
    const base = (basePath: string, version?: string) => ({ origin: 'http://h', basePath, version });
    expect(upstreamPath(base('/v1', '/v1'), '/v1/chat/completions')).toBe('/v1/chat/completions');
    expect(upstreamPath(base('/openai/v1', '/v1'), '/v1/responses?x=1')).toBe('/openai/v1/responses?x=1');
    expect(upstreamPath(base('/v1', '/v1'), '/v1beta/models/x:generate')).toBe('/v1/v1beta/models/x:generate');
    expect(upstreamPath(base('/v1', '/v1'), '/v10/x')).toBe('/v1/v10/x');
    expect(upstreamPath(base(''), '/v1/chat/completions')).toBe('/v1/chat/completions');
    expect(upstreamPath(base('/openai'), '/v1/chat/completions')).toBe('/openai/v1/chat/completions');
    expect(upstreamPath(base('/v1', '/v1'), '/v1')).toBe('/v1');
    expect(upstreamPath(base(''), '')).toBe('/');
  });

  test('parseRetryAfter: ms headers, seconds, HTTP dates, junk', async () => {
    const { parseRetryAfter } = await import('../lib/relay/retry-after');
    const now = Date.parse('2026-01-01T00:00:00Z');
    expect(parseRetryAfter({ 'retry-after-ms': '250', 'retry-after': '9' }, now)).toBe(250);
    expect(parseRetryAfter({ 'retry-after': '2' }, now)).toBe(2000);
    expect(parseRetryAfter({ 'retry-after': '0.5' }, now)).toBe(500);
    expect(parseRetryAfter({ 'retry-after': 'Thu, 01 Jan 2026 00:00:03 GMT' }, now)).toBe(3000);
    expect(parseRetryAfter({ 'retry-after': 'Wed, 31 Dec 2025 00:00:00 GMT' }, now)).toBe(0);
    expect(parseRetryAfter({ 'retry-after': 'soon' }, now)).toBeUndefined();
    expect(parseRetryAfter({}, now)).toBeUndefined();
  });

  test('relay() rejects invalid options', async () => {
    const { relay } = await import('../lib/entry/relay');
    expect(() => relay({ timeoutMs: 0 })).toThrow(/timeoutMs/);
    expect(() => relay({ bodyTimeoutMs: -1 })).toThrow(/bodyTimeoutMs/);
  });
});
