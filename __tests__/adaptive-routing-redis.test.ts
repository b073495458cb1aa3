// Adaptive routing across instances (issue 14, API.md 11.4) on a real Redis: limits counted in
// RedisStore are shared by every distributor on the same prefix (rpm and maxConcurrency seen at
// the upstream), the overflow queue works across instances, holds go back on close, abort and
// shutdown, and ejections / cooling keys reach the other instance. Loopback upstreams count what
// they receive; nothing of the package is mocked and no timer is faked.
import { afterAll, afterEach, beforeAll, expect, test } from '@jest/globals';
import { createClient } from 'redis';
import type { ChannelInput, DistributorOptions } from '../lib';
import { RedisStore } from '../lib/entry/redis';
import { chan, closeAgents, gateway, post, postAndAbandon, sleep, stopAdaptive, until, upstream } from './helpers/adaptive-kit';
import { describeRedis, flushPrefix } from './helpers/redis';

type Client = ReturnType<typeof createClient>;

async function connect(url: string): Promise<Client> {
  const c = createClient({ url });
  c.on('error', () => undefined);
  await c.connect();
  return c as Client;
}

describeRedis('adaptive routing on a shared Redis', (url) => {
  const clients: Client[] = [];
  let admin: Client;
  let prefix = '';
  let seq = 0;

  beforeAll(async () => {
    admin = await connect(url);
  });
  afterEach(async () => {
    await stopAdaptive();
    await flushPrefix((args) => admin.sendCommand(args), prefix);
    await Promise.all(clients.splice(0).map((c) => c.quit().catch(() => undefined)));
  });
  afterAll(async () => {
    await admin.quit();
    await closeAgents();
  });

  /** Two gateways (own Redis clients and subscribers) on one prefix, unique to the test. */
  async function twoInstances(channels: ChannelInput[], options: Partial<DistributorOptions> = {}) {
    prefix = `ecd-test-adaptive:${process.pid}:${++seq}:`;
    const out = [];
    for (let i = 0; i < 2; i++) {
      const [client, subscriber] = await Promise.all([connect(url), connect(url)]);
      clients.push(client, subscriber);
      const store = new RedisStore({ client, subscriber, prefix, timeoutMs: 1000 });
      out.push(await gateway({ channels, store, syncIntervalMs: 200, validate: { sharedStore: false }, ...options }));
    }
    return out;
  }

  /** Live concurrency holds of a one-key channel in Redis (`lim:{id}:0`, its `:c` sorted set). */
  const redisHolds = async (id: number) =>
    Number(await admin.sendCommand(['ZCOUNT', `${prefix}lim:{${id}}:0:c`, String(Date.now()), '+inf']));

  test('rpm 30 on two instances: the upstream sees exactly 30 of 2 x 40 requests; the rest get 429 with Retry-After', async () => {
    const up = await upstream();
    const [a, b] = await twoInstances([chan(1, up, { limits: { rpm: 30 } })]);
    const replies: Array<Awaited<ReturnType<typeof post>>> = [];
    // 2 x 40 over about a second, interleaved (all inside one 60 s window)
    for (let i = 0; i < 8; i++) {
      replies.push(...(await Promise.all([...Array(5)].flatMap(() => [post(a.url), post(b.url)]))));
      await sleep(100);
    }
    expect(replies).toHaveLength(80);
    expect(up.count).toBe(30);
    const ok = replies.filter((r) => r.status === 200);
    const refused = replies.filter((r) => r.status === 429);
    expect(ok).toHaveLength(30);
    expect(refused).toHaveLength(50);
    for (const r of refused) {
      const after = Number(r.headers['retry-after']);
      expect(after).toBeGreaterThan(0);
      expect(after).toBeLessThanOrEqual(60);
      expect(r.json<{ error: { code: string } }>().error.code).toBe('channels_saturated');
    }
    // replies alternate a, b: both instances were refused once the shared count was reached
    expect(replies.filter((r, i) => i % 2 === 0 && r.status === 429).length).toBeGreaterThan(0);
    expect(replies.filter((r, i) => i % 2 === 1 && r.status === 429).length).toBeGreaterThan(0);
    expect(Number(await admin.sendCommand(['ZCARD', `${prefix}lim:{1}:0:r`]))).toBe(30);
  });

  test('maxConcurrency 4 shared by two instances: never more than 4 at the upstream; without a queue exactly 4 get through', async () => {
    const up = await upstream();
    up.hold();
    const rejected: string[] = [];
    const [a, b] = await twoInstances([chan(1, up, { limits: { maxConcurrency: 4 } })], { on: { saturated: (e) => void rejected.push(e.outcome) } });
    const replies = [...Array(20)].flatMap(() => [post(a.url), post(b.url)]);
    await until(() => rejected.length === 36, 10_000, '36 rejected');
    expect(up.inFlight).toBe(4);
    expect(await redisHolds(1)).toBe(4);
    up.release();
    const done = await Promise.all(replies);
    expect(done.filter((r) => r.status === 200)).toHaveLength(4);
    expect(done.filter((r) => r.status === 429)).toHaveLength(36);
    expect(up.maxInFlight).toBe(4);
    await until(async () => (await redisHolds(1)) === 0, 2000, 'holds released in Redis');
  });

  test('maxConcurrency 4 shared by two instances with a queue: all 2 x 25 succeed, at most 4 in flight at the upstream', async () => {
    const up = await upstream({ delayMs: 20 });
    const [a, b] = await twoInstances([chan(1, up, { limits: { maxConcurrency: 4 } })], { selection: { overflow: { queueMs: 15_000 } } });
    const done = await Promise.all([...Array(25)].flatMap(() => [post(a.url), post(b.url)]));
    expect(done.map((r) => r.status)).toEqual(Array(50).fill(200));
    expect(up.count).toBe(50);
    expect(up.maxInFlight).toBeLessThanOrEqual(4);
    expect(up.maxInFlight).toBe(4);
    await until(async () => (await redisHolds(1)) === 0, 2000, 'holds released in Redis');
  });

  test('no leaks on Redis: aborted clients, failing upstreams and shutdown give their holds back', async () => {
    const up = await upstream();
    const [a, b] = await twoInstances([chan(1, up, { limits: { maxConcurrency: 3 } })], { retry: { times: 0 } });
    up.hold();
    const gone = [postAndAbandon(a.url), postAndAbandon(b.url)];
    await until(() => up.inFlight === 2);
    expect(await redisHolds(1)).toBe(2);
    for (const g of gone) g.destroy();
    await until(async () => (await redisHolds(1)) === 0, 2000, 'aborted holds released');
    up.release();
    // failing answers
    up.status = () => 500;
    const failed = await Promise.all([post(a.url), post(b.url), post(a.url)]);
    expect(failed.map((r) => r.status)).toEqual([500, 500, 500]);
    await until(async () => (await redisHolds(1)) === 0, 2000, 'failed holds released');
    // shutdown of one instance releases what it holds (the other's stay)
    up.status = () => 200;
    up.hold();
    const held = [post(a.url), post(a.url), post(b.url)];
    await until(() => up.inFlight === 3);
    expect(await redisHolds(1)).toBe(3);
    await a.mw.shutdown();
    // (that they are already there when shutdown() resolves is the next test)
    await until(async () => (await redisHolds(1)) === 1, 1000, "a's holds released by shutdown");
    up.release();
    await Promise.allSettled(held);
    await until(async () => (await redisHolds(1)) === 0, 2000, 'all released');
  });

  // shutdown() resolves once Redis has the releases: a client destroyed right after loses none
  // (else the slots would stay taken on every other instance until their 120 s lease lapses).
  test('after `await shutdown()` the client may be destroyed at once: the holds are already released in Redis', async () => {
    const up = await upstream();
    const [a, b] = await twoInstances([chan(1, up, { limits: { maxConcurrency: 3 } })]);
    up.hold();
    const held = [post(a.url), post(a.url), post(b.url)];
    await until(() => up.inFlight === 3);
    expect(await redisHolds(1)).toBe(3);
    await a.mw.shutdown();
    clients[0].destroy(); // instance a's command client, closed the moment shutdown() resolved
    await sleep(100);
    expect(await redisHolds(1)).toBe(1);
    up.release();
    await Promise.allSettled(held);
  });

  test('an outlier ejection on one instance is seen by the other', async () => {
    const bad = await upstream({ status: () => 500 });
    const good = await upstream();
    const outlier = { failureRate: 0.5, minRequests: 3, windowMs: 10_000, baseEjectionMs: 3000, maxEjectionMs: 5000, maxEjectionPercent: 50 };
    const [a, b] = await twoInstances([chan(1, bad, { priority: 1 }), chan(2, good)], { retry: { times: 1 }, health: { outlier } });
    for (let i = 0; i < 3; i++) await post(a.url);
    const ejectedUntil = a.mw.health(1)?.ejectedUntil;
    expect(ejectedUntil).toEqual(expect.any(Number));
    await until(() => b.mw.health(1)?.ejectedUntil === ejectedUntil, 2000, 'ejection seen by b');
    bad.reset();
    const r = await post(b.url);
    expect(r.json().tried).toEqual([2]);
    expect(bad.count).toBe(0);
  });

  test('a key cooled by rotateKey on one instance is skipped by the other', async () => {
    const KEYS = ['sk-redis-key-zero', 'sk-redis-key-one'];
    const multi = await upstream({ status: (_n, key) => (key === KEYS[0] ? 429 : 200) });
    const [a, b] = await twoInstances([chan(1, multi, { key: KEYS, multiKeyMode: 'polling' })]);
    const first = (await post(a.url)).json();
    expect(first).toMatchObject({ channel: 1, keyIndex: 1, tried: [1] });
    await until(() => Object.keys(b.mw.health(1)?.coolingKeys ?? {}).join() === '0', 2000, 'cooling key seen by b');
    multi.reset();
    for (let i = 0; i < 3; i++) expect((await post(b.url)).json().keyIndex).toBe(1);
    expect(multi.keys).toEqual([KEYS[1], KEYS[1], KEYS[1]]);
  });
});
