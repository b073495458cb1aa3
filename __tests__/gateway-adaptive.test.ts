// `npm run start:adaptive` (examples/gateway/adaptive.json): what each printed line claims, driven
// through undici against the in-process gateway and its mock upstreams: least-busy (and, with
// STRATEGY=lowest-latency, lowest-latency), limits with the overflow queue and the 429 after it,
// key rotation, outlier ejection, hedging.
import { afterAll, describe, expect, test } from '@jest/globals';
import path from 'node:path';
import { Agent, request } from 'undici';
import { startGateway, type Gateway } from '../examples/gateway/server';

const client = new Agent({ keepAliveTimeout: 1000, connections: 50 });
const toStop: Array<() => Promise<unknown>> = [];
afterAll(async () => {
  while (toStop.length) await toStop.pop()?.();
  await client.close();
});

const FILE = path.join(__dirname, '..', 'examples', 'gateway', 'adaptive.json');

async function boot(extra: Record<string, string> = {}): Promise<Gateway> {
  const gw = await startGateway({ port: 0, env: { CHANNELS_FILE: FILE, ...extra } });
  toStop.push(() => gw.close());
  return gw;
}

async function chat(gw: Gateway, model: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string; ms: number }> {
  const t0 = Date.now();
  const r = await request(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    dispatcher: client,
    headers: { authorization: 'Bearer sk-demo-alice', 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }] }),
  });
  const text = await r.body.text();
  return { status: r.statusCode, headers: r.headers, text, ms: Date.now() - t0 };
}

const who = (text: string) => /Hello from ([a-z-]+)/.exec(text)?.[1];

/** `total` requests with `parallel` in flight at any time (a new one starts when one ends). */
async function pool<T>(total: number, parallel: number, run: () => Promise<T>): Promise<T[]> {
  const out: T[] = [];
  let started = 0;
  await Promise.all(Array.from({ length: parallel }, async () => {
    while (started < total) {
      started++;
      out.push(await run());
    }
  }));
  return out;
}

function count(names: Array<string | undefined>): Record<string, number> {
  const c: Record<string, number> = {};
  for (const n of names) c[String(n)] = (c[String(n)] ?? 0) + 1;
  return c;
}

describe('npm run start:adaptive', () => {
  let gw: Gateway;
  test('boots with its own mocks and prints its own lines, each naming what it shows', async () => {
    gw = await boot();
    expect(Object.keys(gw.mocks)).toEqual(expect.arrayContaining(['fast', 'slow', 'small', 'pooled', 'keys', 'flaky', 'stuck', 'backup', 'metered']));
    expect(gw.tries).toHaveLength(8);
    expect(gw.curls).toHaveLength(8);
    for (const c of gw.curls) {
      expect(c).toContain(gw.url);
      expect(c).not.toContain('{url}');
    }
  });

  test('least-busy: 40 requests 8 at a time; the fast channel frees its slots sooner and takes most', async () => {
    const served = count((await pool(40, 8, () => chat(gw, 'gpt-4o-mini'))).map((r) => who(r.text)));
    expect((served.fast ?? 0) + (served.slow ?? 0)).toBe(40);
    expect(served.fast).toBeGreaterThan(served.slow ?? 0);
  });

  test('limits + queue: 8 at once on maxConcurrency 2 + 1 per key: all 200, never more in flight than the limits', async () => {
    let maxSmall = 0;
    let maxPooled = 0;
    const sampler = setInterval(() => {
      maxSmall = Math.max(maxSmall, gw.mocks.small.open);
      maxPooled = Math.max(maxPooled, gw.mocks.pooled.open);
    }, 2);
    const rs = await Promise.all(Array.from({ length: 8 }, () => chat(gw, 'gpt-4o')));
    clearInterval(sampler);
    expect(rs.map((r) => r.status)).toEqual(Array(8).fill(200));
    expect(maxSmall).toBeLessThanOrEqual(2);
    expect(maxPooled).toBeLessThanOrEqual(2); // one per key, two keys
    expect(maxSmall + maxPooled).toBeGreaterThan(1);
  });

  test('rpm 10: 13 in a row give 10 answers, then 429 channels_saturated with Retry-After after the 1 s queue', async () => {
    const rs: Awaited<ReturnType<typeof chat>>[] = [];
    for (let i = 0; i < 13; i++) rs.push(await chat(gw, 'gpt-4.1-nano'));
    expect(rs.slice(0, 10).map((r) => r.status)).toEqual(Array(10).fill(200));
    for (const r of rs.slice(10)) {
      expect(r.status).toBe(429);
      expect(Number(r.headers['retry-after'])).toBeGreaterThan(0);
      expect(JSON.parse(r.text)).toMatchObject({ error: { code: 'channels_saturated', type: 'distributor_error' } });
      expect(r.ms).toBeGreaterThanOrEqual(900); // it waited in the queue first
    }
    expect(gw.mocks.metered.stats.hits).toBe(10);
  });

  test('key rotation: key 0 answers 429, the retry uses key 1 of the same channel; key 0 cools', async () => {
    const r = await chat(gw, 'gpt-4.1');
    expect(r.status).toBe(200);
    expect(String(r.headers['x-distributor-trace'])).toContain('rotate_key ch=5 key=1');
    expect(Object.keys(gw.distributor.health(5)?.coolingKeys ?? {})).toEqual(['0']);
    // while it cools, the next requests go to key 1 straight away
    const next = await chat(gw, 'gpt-4.1');
    expect(String(next.headers['x-distributor-trace'])).not.toContain('upstream 429');
  });

  test('outlier ejection: flaky (80 % failures) is ejected within 80 requests, and never more than half of the three', async () => {
    // a third of first picks go to flaky (~27 of 80; the ejection needs 10 attempts in the window)
    for (let i = 0; i < 80; i++) await chat(gw, 'gpt-4.1-mini');
    expect(gw.distributor.health(6)?.ejectedUntil).toBeGreaterThan(Date.now());
    const ejected = [6, 7, 8].filter((id) => gw.distributor.health(id)?.ejectedUntil !== null);
    expect(ejected).toEqual([6]);
  });

  test('hedging: stuck sends no headers for 3 s; after 400 ms a hedge on backup answers', async () => {
    const r = await chat(gw, 'o3-mini');
    expect(r.status).toBe(200);
    expect(who(r.text)).toBe('backup');
    expect(r.ms).toBeLessThan(1500);
    expect(String(r.headers['x-distributor-trace'])).toBe('select ch=9 -> hedge ch=10 -> hedge_lost ch=9 -> hedge_won ch=10');
  });
});

describe('STRATEGY=lowest-latency npm run start:adaptive', () => {
  test('once both channels are measured, nearly every request goes to the fast one', async () => {
    const gw = await boot({ STRATEGY: 'lowest-latency' });
    // warm-up until both have minSamples (2 here); a channel short of them gets the explore share
    const samples = (id: number) => gw.distributor.health(id)?.latency['gpt-4o-mini']?.samples ?? 0;
    for (let i = 0; i < 50 && (samples(1) < 2 || samples(2) < 2); i++) await pool(4, 4, () => chat(gw, 'gpt-4o-mini'));
    expect(samples(1)).toBeGreaterThanOrEqual(2);
    expect(samples(2)).toBeGreaterThanOrEqual(2);
    // then the explore share (0.1 in adaptive.json) re-measures the slow one: ~90 % go to fast
    const served = count((await pool(100, 4, () => chat(gw, 'gpt-4o-mini'))).map((r) => who(r.text)));
    expect(served.fast).toBeGreaterThanOrEqual(78); // expected 90, sd 3
  });
});
