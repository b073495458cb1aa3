// Fault scenarios against real processes on loopback (mock upstreams, distributor(), relay()):
// for each, what the client sees, what the pins and channel health look like afterwards, and that
// nothing was lost (every request answered once, every upstream call accounted for). The
// client-side view of several of these is also in __tests__/relay.test.ts; this suite adds the
// aftermath (pins, health, accounting), 429 with and without Retry-After, a pinned channel
// disabled while its request is in flight, and channels deleted while requests are in flight.
import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import { ChannelStatus, defaultAffinityRules, type AffinityRule, type DistributorOptions } from '../../lib';
import { memoryLogger } from '../helpers/create-app';
import { RecordingStore } from '../helpers/recording-store';
import { ch, closeClient, closedPortUrl, ctx, gateway, mock, post, stopAll, type Gateway, type Reply } from '../helpers/relay-kit';
import { CHANNEL_KEYS, SESSION_SECRET, TOKEN_A, X_API_KEY, counters, leakedSecrets, openAiError, sleep } from './kit';

const MODEL = 'gpt-4o-mini';
/** The example gateway's rules: a failing pinned session may move to another channel. */
const RULES: AffinityRule[] = defaultAffinityRules().map((r) => ({ ...r, skipRetryOnFailure: false }));
const loggers: Array<ReturnType<typeof memoryLogger>> = [];
const replies: Reply[] = [];
const gateways: Gateway[] = [];

afterEach(async () => {
  for (const gw of gateways) expect(counters(gw.mw)).toEqual({ active: 0, retrying: 0 });
  gateways.length = 0;
  await stopAll();
});
afterAll(async () => {
  await closeClient();
  // secrets: no channel key, caller token, x-api-key or session value in any answer or log line
  const text = replies.map((r) => r.text + JSON.stringify(r.headers)).join('\n') + loggers.map((l) => l.text()).join('\n');
  expect(leakedSecrets(text)).toEqual([]);
});

/** A channel on a mock with one of the planted keys (the mocks echo `{auth}` in failure messages). */
const chan = (id: number, target: Parameters<typeof ch>[1], extra: Parameters<typeof ch>[2] = {}) => ch(id, target, { key: CHANNEL_KEYS[id - 1], ...extra });

async function gw(channels: Parameters<typeof gateway>[0], options: Partial<DistributorOptions> = {}, relayOptions: Parameters<typeof gateway>[2] = {}) {
  const logger = memoryLogger();
  loggers.push(logger);
  const store = new RecordingStore();
  const g = await gateway(channels, { logger, store, affinity: { rules: RULES }, ...options }, relayOptions);
  gateways.push(g);
  return { ...g, store, logger };
}

const HEADERS = { authorization: `Bearer ${TOKEN_A}`, 'x-api-key': X_API_KEY, ...ctx({ tokenId: 'A' }) };

async function ask(g: Gateway, session: string, extra: Record<string, unknown> = {}): Promise<Reply> {
  const r = await post(g.url, { model: MODEL, input: 'hi', prompt_cache_key: `${SESSION_SECRET}-${session}`, ...extra }, HEADERS, '/v1/responses');
  replies.push(r);
  return r;
}

const who = (r: Reply) => /(?:Hello from |resp_mock_)(\w+)/.exec(r.text)?.[1];

/**
 * The pinned channel of the session asked last (the key its lookup used), read without refreshing
 * it; the stored value must be exactly the channel id in decimal.
 */
async function pinOfLast(store: RecordingStore): Promise<number | null> {
  const calls = store.of('getPin');
  const value = await store.inner.getPin(calls[calls.length - 1][0] as string);
  if (value === null) return null;
  expect(value).toMatch(/^[1-9][0-9]*$/);
  return Number(value);
}

describe('upstream 429', () => {
  test('with Retry-After on every channel: the client gets the 429 and the last Retry-After; no pin; both channels cool down', async () => {
    const a = await mock({ name: 'a', failRate: 1, failStatus: 429, retryAfter: '7', failMessage: 'rate limited for {auth}' });
    const b = await mock({ name: 'b', failRate: 1, failStatus: 429, retryAfter: '3', failMessage: 'rate limited for {auth}' });
    const g = await gw([chan(1, a, { priority: 10 }), chan(2, b)], { health: { cooldown: { failures: 1, windowMs: 60_000, durationMs: 60_000 } } });
    const r = await ask(g, 's1');
    expect(r.status).toBe(429);
    expect(r.headers['retry-after']).toBe('3'); // the answer of the last attempt (channel 2)
    const e = JSON.parse(r.text) as { error: { message: string; type: string } };
    expect(e.error.type).toBe('rate_limit_exceeded');
    expect(e.error.message).toContain('[REDACTED]'); // the upstream echoed its key: scrubbed
    expect(g.last()).toMatchObject({ tried: [1, 2], stopReason: 'no_channel' });
    expect(g.errors.map((x) => x.retryAfterMs)).toEqual([7000, 3000]);
    await sleep(20);
    expect(await pinOfLast(g.store)).toBeNull();
    expect(g.store.of('setPin')).toEqual([]);
    expect(g.mw.health(1)).toMatchObject({ status: ChannelStatus.Enabled, coolingDown: true });
    expect(g.mw.health(2)).toMatchObject({ status: ChannelStatus.Enabled, coolingDown: true });
    // afterwards: both cooling -> the distributor answers 503 at once, without calling upstream
    const after = await ask(g, 's1');
    expect(after.status).toBe(503);
    expect(openAiError(after.text)?.error.code).toBe('model_not_found');
    expect([a.stats.hits, b.stats.hits]).toEqual([1, 1]);
  });

  test('without Retry-After: retried elsewhere and pinned there; when every channel is limited the 429 carries no Retry-After', async () => {
    const a = await mock({ name: 'a', failRate: 1, failStatus: 429 });
    const b = await mock({ name: 'b' });
    const g = await gw([chan(1, a, { priority: 10 }), chan(2, b)], { health: { cooldown: { failures: 3, windowMs: 60_000, durationMs: 60_000 } } });
    const r = await ask(g, 's2');
    expect(r.status).toBe(200);
    expect(who(r)).toBe('b');
    expect(g.errors[0]).toMatchObject({ channelId: 1, status: 429 });
    expect(g.errors[0].retryAfterMs).toBeUndefined();
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(2);
    expect(g.mw.health(1)).toMatchObject({ coolingDown: false }); // 1 failure of 3
    // the pinned session stays on b; channel a is not asked again for it
    expect(who(await ask(g, 's2'))).toBe('b');
    expect(g.last().affinity).toMatchObject({ hit: true, used: true });
    b.set({ failRate: 1, failStatus: 429 });
    const limited = await ask(g, 's3');
    expect(limited.status).toBe(429);
    expect(limited.headers['retry-after']).toBeUndefined();
    expect(a.stats.hits + b.stats.hits).toBe(1 + 1 + 1 + 2);
  });
});

describe('persistent 5xx', () => {
  test('a pinned session: the pin is used, fails, is cleared; every channel cools down; 503 while cooling; recovery and a new pin after', async () => {
    const mocks = await Promise.all(['a', 'b', 'c'].map((name) => mock({ name })));
    const g = await gw(mocks.map((m, i) => chan(i + 1, m, { weight: 1 })), { health: { cooldown: { failures: 2, windowMs: 60_000, durationMs: 600 } } });
    const first = await ask(g, 's');
    expect(first.status).toBe(200);
    await sleep(20);
    const pinned = (await pinOfLast(g.store))!;
    expect([1, 2, 3]).toContain(pinned);
    for (const m of mocks) m.set({ failRate: 1, failStatus: 500 });

    const r2 = await ask(g, 's');
    expect(r2.status).toBe(500);
    expect((JSON.parse(r2.text) as { error: { message: string } }).error.message).toContain('failure (500)'); // the upstream's own error body
    expect(g.last()).toMatchObject({ affinity: { hit: true, used: true, cleared: true }, stopReason: 'times' });
    expect(g.last().tried[0]).toBe(pinned);
    await sleep(20);
    expect(await pinOfLast(g.store)).toBeNull(); // cleared: a failed request writes nothing
    const r3 = await ask(g, 's');
    expect(r3.status).toBe(500);
    for (const id of [1, 2, 3]) expect(g.mw.health(id)).toMatchObject({ coolingDown: true, status: ChannelStatus.Enabled });
    const r4 = await ask(g, 's');
    expect(r4.status).toBe(503);
    expect(openAiError(r4.text)?.error.code).toBe('model_not_found');
    expect(mocks.reduce((n, m) => n + m.stats.hits, 0)).toBe(1 + 3 + 3 + 0); // nothing lost, nothing extra

    for (const m of mocks) m.set({ failRate: 0 });
    await sleep(650); // the cooldowns end by themselves
    const r5 = await ask(g, 's');
    expect(r5.status).toBe(200);
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(g.last().tried[0]);
  });

  test('with the reference rule (skipRetryOnFailure): a failing pinned channel is answered at once, its pin cleared, the next request reselects', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const g = await gw([chan(1, a, { priority: 10 }), chan(2, b)], { affinity: {} });
    expect(who(await ask(g, 'ref'))).toBe('a');
    a.set({ failRate: 1, failStatus: 502 });
    const r = await ask(g, 'ref');
    expect(r.status).toBe(502);
    expect(g.last()).toMatchObject({ stopReason: 'skip_rule', tried: [1], affinity: { used: true, cleared: true } });
    await sleep(20);
    expect(await pinOfLast(g.store)).toBeNull();
    const next = await ask(g, 'ref');
    expect(next.status).toBe(200); // a miss: the rule's skip does not apply, a is retried on b
    expect(who(next)).toBe('b');
    expect(g.last()).toMatchObject({ tried: [1, 2], affinity: { hit: false } });
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(2);
    expect([a.stats.hits, b.stats.hits]).toEqual([1 + 1 + 1, 1]);
  });
});

describe('connection refused and no response', () => {
  test('refused: retried on the next channel, which gets the pin; the refusing channel cools down; all refused -> 502 without addresses', async () => {
    const dead = await closedPortUrl();
    const ok = await mock({ name: 'ok' });
    const g = await gw([chan(1, dead, { priority: 10 }), chan(2, ok)], { health: { cooldown: { failures: 1, windowMs: 60_000, durationMs: 60_000 } } });
    const r = await ask(g, 'refused');
    expect(r.status).toBe(200);
    expect(who(r)).toBe('ok');
    expect(g.last().attempts).toEqual([{ channelId: 1, phase: 'upstream', status: undefined, reason: 'Upstream refused the connection' }]);
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(2);
    expect(g.mw.health(1)).toMatchObject({ coolingDown: true });
    expect(g.mw.health(2)).toMatchObject({ coolingDown: false });

    const g2 = await gw([chan(1, dead), chan(2, await closedPortUrl())]);
    const all = await ask(g2, 'refused');
    expect(all.status).toBe(502);
    expect(openAiError(all.text)?.error.code).toBe('upstream_connection_error');
    expect(all.text).not.toMatch(/127\.0\.0\.1|:\d{4,5}/);
    await sleep(20);
    expect(g2.store.of('setPin')).toEqual([]);
    expect(ok.stats.hits).toBe(1);
  });

  test('no response within timeoutMs: the next channel serves; the silent one is counted; all silent -> 504', async () => {
    const silent = await mock({ name: 'silent', delayMs: 3000 });
    const ok = await mock({ name: 'ok' });
    const g = await gw([chan(1, silent, { priority: 10 }), chan(2, ok)], { health: { cooldown: { failures: 1, windowMs: 60_000, durationMs: 60_000 } } }, { timeoutMs: 300 });
    const t0 = Date.now();
    const r = await ask(g, 'slow');
    expect(r.status).toBe(200);
    expect(who(r)).toBe('ok');
    expect(Date.now() - t0).toBeLessThan(2000);
    expect(g.errors[0]).toMatchObject({ channelId: 1, code: 'upstream_timeout' });
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(2);
    expect(g.mw.health(1)).toMatchObject({ coolingDown: true });
    expect([silent.stats.hits, ok.stats.hits]).toEqual([1, 1]);

    const silent2 = await mock({ name: 'silent2', delayMs: 3000 });
    const g2 = await gw([chan(1, silent2)], {}, { timeoutMs: 300 });
    const all = await ask(g2, 'slow');
    expect(all.status).toBe(504);
    expect(openAiError(all.text)?.error.code).toBe('upstream_timeout');
  });
});

describe('streams cut', () => {
  test('before the commit point: retried on another channel, the client gets one whole stream, the pin goes there', async () => {
    const cut = await mock({ name: 'cut', cutAfterChunks: 0 });
    const ok = await mock({ name: 'ok' });
    const g = await gw([chan(1, cut, { priority: 10 }), chan(2, ok)]);
    const r = await ask(g, 'cut-before', { stream: true });
    expect(r.status).toBe(200);
    expect(r.aborted).toBeUndefined();
    expect(r.text).toContain('event: response.completed');
    expect(r.text).not.toContain('mock_cut');
    expect(r.text.match(/event: response\.created/g)).toHaveLength(1); // one stream, not two spliced
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(2);
    expect([cut.stats.hits, ok.stats.hits]).toEqual([1, 1]);
  });

  test('after the commit point: the client sees an explicit error event; no retry, no pin, a failure on the channel; a pinned session loses its pin', async () => {
    const flaky = await mock({ name: 'flaky' });
    const other = await mock({ name: 'other' });
    const g = await gw([chan(1, flaky, { priority: 10 }), chan(2, other)], { health: { cooldown: { failures: 1, windowMs: 60_000, durationMs: 60_000 } } });
    expect(who(await ask(g, 'cut-after', { stream: true }))).toBe('flaky');
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(1);
    flaky.set({ cutAfterChunks: 2 });
    const r = await ask(g, 'cut-after', { stream: true });
    expect(r.status).toBe(200); // the status line was already sent
    expect(r.text).toContain('event: error');
    expect(r.text).toContain('stream_interrupted');
    expect(r.text).not.toContain('response.completed');
    expect(g.last()).toMatchObject({ tried: [1], affinity: { used: true, cleared: true } });
    await sleep(20);
    expect(await pinOfLast(g.store)).toBeNull();
    expect(g.mw.health(1)).toMatchObject({ coolingDown: true });
    expect([flaky.stats.hits, other.stats.hits]).toEqual([2, 0]); // nothing retried after the commit
    const next = await ask(g, 'cut-after', { stream: true });
    expect(who(next)).toBe('other');
  });
});

describe('registry changes while requests are in flight', () => {
  test('a pinned channel disabled while its request is in flight: that request completes; the next one is re-routed without an error', async () => {
    const a = await mock({ name: 'a' });
    const b = await mock({ name: 'b' });
    const g = await gw([chan(1, a, { priority: 10 }), chan(2, b)]);
    expect(who(await ask(g, 'mid'))).toBe('a');
    await sleep(20);
    a.set({ delayMs: 400 });
    const inFlight = ask(g, 'mid');
    while (a.stats.hits < 2) await sleep(5);
    g.mw.registry.setStatus(1, ChannelStatus.ManuallyDisabled);
    const done = await inFlight;
    expect(done.status).toBe(200);
    expect(who(done)).toBe('a'); // already forwarded: not cut
    const next = await ask(g, 'mid');
    expect(next.status).toBe(200);
    expect(who(next)).toBe('b');
    expect(g.last().affinity).toMatchObject({ hit: true, used: false, stale: 'disabled', cleared: true });
    await sleep(20);
    expect(await pinOfLast(g.store)).toBe(2);
    expect(g.mw.health(1)).toMatchObject({ status: ChannelStatus.ManuallyDisabled });
    expect([a.stats.hits, b.stats.hits]).toEqual([2, 1]);
  });

  test('a channel deleted while 30 requests are in flight on it: they complete (or are retried elsewhere when they fail); every pin then moves; no request fails', async () => {
    // channel a's upstream answers after `delay` ms; a body with "fail": true gets a 500
    let delay = 0;
    let aHits = 0;
    const http = await import('node:http');
    const server = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (d: Buffer) => chunks.push(d));
      req.on('end', () => {
        aHits++;
        const fail = Buffer.concat(chunks).toString().includes('"fail":true');
        setTimeout(() => {
          res.writeHead(fail ? 500 : 200, { 'content-type': 'application/json' });
          res.end(fail ? '{"error":{"message":"a failed","type":"server_error","code":"x"}}' : '{"id":"resp_mock_a","object":"response","output_text":"Hello from a"}');
        }, delay);
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const aUrl = `http://127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}`;
      const b = await mock({ name: 'b' });
      const c = await mock({ name: 'c' });
      const g = await gw([chan(1, aUrl)], { random: Math.random });
      // 10 sessions pinned to a (the only channel), then b and c join
      for (let i = 0; i < 10; i++) expect(who(await ask(g, `del-${i}`))).toBe('a');
      await sleep(20);
      g.mw.registry.upsert(chan(2, b));
      g.mw.registry.upsert(chan(3, c));
      delay = 400;
      // 20 pinned requests (2 per session) that succeed late, 10 that fail late and must be retried elsewhere
      const ok = Array.from({ length: 20 }, (_, i) => ask(g, `del-${i % 10}`));
      const failing = Array.from({ length: 10 }, (_, i) => ask(g, `del-${i}`, { fail: true }));
      while (aHits < 10 + 30) await sleep(5);
      expect(g.mw.registry.remove(1)).toBe(true);
      const first = await Promise.all(ok);
      const second = await Promise.all(failing);
      expect(first.map((r) => r.status)).toEqual(Array(20).fill(200));
      expect(first.map(who)).toEqual(Array(20).fill('a')); // forwarded before the delete: served by a
      expect(second.map((r) => r.status)).toEqual(Array(10).fill(200));
      for (const r of second) expect(['b', 'c']).toContain(who(r)); // retried: never the deleted channel
      expect(g.mw.health(1)).toBeUndefined();
      // afterwards: each session is re-routed (stale 'missing' or already moved) and sticks to b or c
      await sleep(20);
      const pins = new Map<string, string>();
      for (let i = 0; i < 10; i++) {
        const r = await ask(g, `del-${i}`);
        expect(r.status).toBe(200);
        expect(['b', 'c']).toContain(who(r));
        pins.set(`del-${i}`, who(r)!);
      }
      await sleep(20);
      for (let i = 0; i < 10; i++) {
        const r = await ask(g, `del-${i}`);
        expect(who(r)).toBe(pins.get(`del-${i}`));
        expect(g.last().affinity).toMatchObject({ hit: true, used: true });
        expect(await pinOfLast(g.store)).not.toBe(1);
      }
      // nothing lost: every request answered once; upstream calls = requests + one retry per failed one
      expect(aHits + b.stats.hits + c.stats.hits).toBe(10 + 20 + 10 + 10 + 10 + 10);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });
});
