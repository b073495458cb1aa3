// Affinity that keeps the prompt cache (docs/affinity.md): key-level pins (a session stays on one
// key of a multi-key channel, and moves to another key of the same channel when its key goes off)
// and one channel per new session (concurrent first requests, on one instance or two sharing a
// real Redis, are served by one channel and key). Everything through HTTP on loopback.
import { afterAll, describe, expect, test } from '@jest/globals';
import express from 'express';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createClient } from 'redis';
import { Agent, request as undiciRequest } from 'undici';
import { ChannelStatus, MemoryStore, distributor, type ChannelInput, type DistributorHandler, type DistributorOptions, type Store } from '../lib';
import { RedisStore } from '../lib/entry/redis';
import { memoryLogger } from './helpers/create-app';
import { describeRedis, flushPrefix } from './helpers/redis';

const stops: Array<() => Promise<unknown> | unknown> = [];
const agent = new Agent({ connections: 600, keepAliveTimeout: 1000 });
afterAll(async () => {
  while (stops.length) await stops.pop()?.();
  await agent.close();
});

interface Served {
  channel: number;
  keyIndex: number | null;
  affinity: { hit: boolean; used: boolean; keyIndex?: number; stale?: string } | null;
}

/** An app `distributor -> echo of the channel and key that would serve`, listening on loopback. */
async function gateway(options: Partial<DistributorOptions> & Pick<DistributorOptions, 'channels'>): Promise<{ url: string; mw: DistributorHandler }> {
  const mw = distributor({ logger: memoryLogger(), ...options } as DistributorOptions);
  const app = express();
  app.use(express.json());
  app.use(mw);
  app.use((_req, res) => {
    const d = res.locals.distribution;
    res.json({ channel: res.locals.channel?.id, keyIndex: res.locals.channel?.keyIndex ?? null, affinity: d?.affinity ?? null } satisfies Partial<Served>);
  });
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  stops.push(() => mw.shutdown(), () => new Promise<void>((r) => {
    server.close(() => r());
    server.closeAllConnections();
  }));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, mw };
}

async function ask(url: string, session: string, tokenId = 'tenant-1'): Promise<Served> {
  const r = await undiciRequest(`${url}/v1/responses`, {
    method: 'POST',
    dispatcher: agent,
    headers: { 'content-type': 'application/json', 'x-token-id': tokenId },
    body: JSON.stringify({ model: 'gpt-5', input: 'hi', prompt_cache_key: session }),
  });
  const body = (await r.body.json()) as Served;
  if (r.statusCode !== 200) throw new Error(`status ${r.statusCode}: ${JSON.stringify(body)}`);
  return body;
}

/** Four channels of equal weight, two keys each: without coalescing, first requests spread over all of them. */
const FOUR: ChannelInput[] = [1, 2, 3, 4].map((id) => ({ id, models: 'gpt-5', weight: 1, key: [`sk-${id}-a`, `sk-${id}-b`] }));
const context = (req: express.Request) => ({ tokenId: String(req.headers['x-token-id'] ?? '') });

function spread(served: Served[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of served) {
    const k = `${s.channel}/${s.keyIndex}`;
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

describe('one channel per new session', () => {
  test('500 concurrent first requests of one session on one instance: one channel and one key (0 splits)', async () => {
    const g = await gateway({ channels: FOUR, context });
    const served = await Promise.all(Array.from({ length: 500 }, () => ask(g.url, 'session-burst')));
    const by = spread(served);
    expect(Object.keys(by)).toHaveLength(1);
    // one request reserved the session, the other 499 found its reservation and used it like a pin
    expect(served.filter((s) => s.affinity?.used).length).toBe(499);
  });

  test('with coalesce off (the 0.1 behaviour) the same burst splits over the channels', async () => {
    const g = await gateway({ channels: FOUR, context, affinity: { coalesce: false, keyLevel: false } });
    const served = await Promise.all(Array.from({ length: 500 }, () => ask(g.url, 'session-burst-off')));
    expect(Object.keys(spread(served)).length).toBeGreaterThan(1);
  });

  test('a reservation is confirmed by a success: the session is pinned afterwards with the rule TTL', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const g = await gateway({ channels: FOUR, context, store });
    const first = await ask(g.url, 'session-confirm');
    const again = await ask(g.url, 'session-confirm');
    expect(again).toMatchObject({ channel: first.channel, keyIndex: first.keyIndex, affinity: { hit: true, used: true } });
    expect(Object.values(await store.countPins(() => 'all'))).toEqual([1]);
  });

  test('a hostile value in the store (garbage, an unknown channel, a reservation for a disabled channel) never breaks a request', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const g = await gateway({ channels: [...FOUR.slice(0, 2), { id: 9, models: 'gpt-5', key: 'sk-9', status: ChannelStatus.ManuallyDisabled }], context, store });
    const first = await ask(g.url, 'session-poison');
    const [key] = await keysOf(store);
    for (const poison of ['not-a-pin', '999999.1~zz', '9.0~other', '1.7', '', '1.0~' + 'x'.repeat(500)]) {
      await store.setPin(key, poison, 60_000);
      const r = await ask(g.url, 'session-poison');
      expect([1, 2]).toContain(r.channel);
      if (poison === '1.7') expect(r).toMatchObject({ channel: 1, affinity: { used: true } }); // key 7 does not exist: another key of channel 1
    }
    expect(first.channel).toBeGreaterThan(0);
  });
});

async function keysOf(store: Store): Promise<string[]> {
  const keys: string[] = [];
  await store.countPins?.((k) => {
    keys.push(k);
    return 'k';
  });
  return keys;
}

describe('key-level pins', () => {
  const THREE_KEYS: ChannelInput[] = [
    { id: 1, models: 'gpt-5', priority: 1, key: ['sk-a', 'sk-b', 'sk-c'] },
    { id: 2, models: 'gpt-5', key: 'sk-other' },
  ];

  test('20 sequential requests of one session use one key; disabling it moves the pin to another key of the same channel', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const g = await gateway({ channels: THREE_KEYS, context, store });
    const served: Served[] = [];
    for (let i = 0; i < 20; i++) served.push(await ask(g.url, 'session-keys'));
    expect(new Set(served.map((s) => `${s.channel}/${s.keyIndex}`)).size).toBe(1);
    const { channel, keyIndex } = served[0];
    expect(channel).toBe(1);
    expect(served[19].affinity).toMatchObject({ hit: true, used: true, keyIndex });
    const [key] = await keysOf(store);
    expect(await store.getPin(key)).toBe(`1.${keyIndex}`);

    g.mw.registry.upsert({ ...THREE_KEYS[0], disabledKeys: [keyIndex as number] });
    const moved = await ask(g.url, 'session-keys');
    expect(moved.channel).toBe(1); // the channel pin is not stale
    expect(moved.keyIndex).not.toBe(keyIndex);
    expect(moved.affinity).toMatchObject({ hit: true, used: true, keyIndex });
    expect(moved.affinity?.stale).toBeUndefined();
    await new Promise((r) => setTimeout(r, 10));
    expect(await store.getPin(key)).toBe(`1.${moved.keyIndex}`);
    const after = await ask(g.url, 'session-keys');
    expect(after).toMatchObject({ channel: 1, keyIndex: moved.keyIndex, affinity: { used: true, keyIndex: moved.keyIndex } });
  });

  test('a cooling key (a 429 from it, retry.rotateKey) moves the pin to another key of the same channel; the channel pin is not stale', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const mw = distributor({ logger: memoryLogger(), channels: THREE_KEYS, context, store });
    const app = express();
    app.use(express.json());
    app.use(mw);
    // the "upstream": key `x-429-key` answers 429 (with a Retry-After of 60 s), every other key 200
    app.use(async (req, res) => {
      const d = res.locals.distribution;
      if (d && String(res.locals.channel?.keyIndex) === req.headers['x-429-key']) await d.retry({ status: 429, retryAfterMs: 60_000 });
      res.json({ channel: res.locals.channel?.id, keyIndex: res.locals.channel?.keyIndex ?? null, affinity: d?.affinity ?? null, tried: d?.tried, trace: d?.trace });
    });
    const server: Server = await new Promise((resolve) => {
      const s2 = app.listen(0, '127.0.0.1', () => resolve(s2));
    });
    stops.push(() => mw.shutdown(), () => new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    }));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const call = async (failKey?: number) => {
      const r = await undiciRequest(`${url}/v1/responses`, {
        method: 'POST', dispatcher: agent,
        headers: { 'content-type': 'application/json', 'x-token-id': 't', ...(failKey === undefined ? {} : { 'x-429-key': String(failKey) }) },
        body: JSON.stringify({ model: 'gpt-5', input: 'hi', prompt_cache_key: 'session-cool' }),
      });
      return (await r.body.json()) as Served & { tried: number[]; trace: string[] };
    };
    const first = await call();
    const pinnedKey = first.keyIndex as number;
    await new Promise((r) => setTimeout(r, 10));
    const [key] = await keysOf(store);
    expect(await store.getPin(key)).toBe(`1.${pinnedKey}`);

    // the pinned key answers 429. The default rules skip retries on a used pin (skipRetryOnFailure),
    // so this request stops there; the key cools all the same (Retry-After: 60 s)
    const failed = await call(pinnedKey);
    expect(failed).toMatchObject({ channel: 1, keyIndex: pinnedKey, tried: [1] });
    expect(failed.trace).toContain('stop:skip_rule');
    expect(mw.health(1)?.coolingKeys[pinnedKey]).toBeGreaterThan(Date.now() + 50_000);

    // the next request of the session: same channel (a hit, not stale), another key, and the pin moves to it
    const moved = await call();
    expect(moved.channel).toBe(1);
    expect(moved.keyIndex).not.toBe(pinnedKey);
    expect(moved.affinity).toMatchObject({ hit: true, used: true, keyIndex: pinnedKey });
    expect(moved.affinity?.stale).toBeUndefined();
    await new Promise((r) => setTimeout(r, 10));
    expect(await store.getPin(key)).toBe(`1.${moved.keyIndex}`);
    const after = await call();
    expect(after).toMatchObject({ channel: 1, keyIndex: moved.keyIndex, affinity: { hit: true, used: true, keyIndex: moved.keyIndex } });
  });

  test('a 0.1 pin (channel only) still serves, and the first success records the key', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const g = await gateway({ channels: THREE_KEYS, context, store });
    await ask(g.url, 'session-old');
    const [key] = await keysOf(store);
    await store.setPin(key, '1', 60_000); // what 0.1 wrote
    const r = await ask(g.url, 'session-old');
    expect(r).toMatchObject({ channel: 1, affinity: { hit: true, used: true } });
    await new Promise((res) => setTimeout(res, 10));
    expect(await store.getPin(key)).toBe(`1.${r.keyIndex}`);
  });

  test('keyLevel off: pins name the channel only (as 0.1)', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const g = await gateway({ channels: THREE_KEYS, context, store, affinity: { keyLevel: false } });
    await ask(g.url, 'session-chan');
    await new Promise((r) => setTimeout(r, 10));
    const [key] = await keysOf(store);
    expect(await store.getPin(key)).toBe('1');
  });

  test('another tenant with the same session value gets its own key and its own pin', async () => {
    const store = new MemoryStore();
    stops.push(() => store.shutdown());
    const g = await gateway({ channels: FOUR, context, store });
    await ask(g.url, 'shared-value', 'tenant-a');
    await ask(g.url, 'shared-value', 'tenant-b');
    expect(await keysOf(store)).toHaveLength(2);
  });
});

describeRedis('one channel per new session across instances sharing Redis', (url) => {
  test('2 x 250 concurrent first requests on two instances: one channel and one key (0 splits)', async () => {
    const client = createClient({ url });
    client.on('error', () => undefined);
    await client.connect();
    const prefix = `ecd-coalesce-${process.pid}:`;
    stops.push(async () => {
      await flushPrefix((args) => client.sendCommand(args), prefix);
      await client.quit();
    });
    const a = await gateway({ channels: FOUR, context, store: new RedisStore({ client, prefix, timeoutMs: 2000 }) });
    const b = await gateway({ channels: FOUR, context, store: new RedisStore({ client, prefix, timeoutMs: 2000 }) });
    const served = await Promise.all(Array.from({ length: 500 }, (_, i) => ask(i % 2 ? a.url : b.url, 'session-two-instances')));
    expect(Object.keys(spread(served))).toHaveLength(1);
    const value = String(await client.sendCommand(['GET', (await client.sendCommand(['KEYS', `${prefix}aff:*`]) as string[])[0]]));
    const s = served[0];
    expect(value.split(':')[0]).toMatch(new RegExp(`^${s.channel}\\.${s.keyIndex}(~|$)`));
  });
});
