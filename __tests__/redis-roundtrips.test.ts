// The Redis budget before next(), counted on the wire through a counting sendCommand (RedisStore
// on a real redis-server): no rule 0, a hit 1, a miss at most 2 (the lookup and, with
// affinity.coalesce, the reservation); 1 for a miss without coalescing.
import { afterAll, beforeAll, expect, test } from '@jest/globals';
import { createClient } from 'redis';
import request from 'supertest';
import { RedisStore } from '../lib/entry/redis';
import { createApp } from './helpers/create-app';
import { describeRedis } from './helpers/redis';

describeRedis('Redis round trips before next()', (url) => {
  const client = createClient({ url });
  client.on('error', () => {});
  let sent: string[][] = [];
  /** Per command sent: how many replies had arrived when it was sent (equal values: one round trip). */
  let waves: number[] = [];
  let replies = 0;
  let store: RedisStore;
  const prefix = `ecd-rt-${process.pid}:`;
  beforeAll(async () => {
    await client.connect();
    store = new RedisStore({
      sendCommand: (args: string[]) => {
        sent.push(args);
        waves.push(replies);
        return client.sendCommand(args).finally(() => {
          replies++;
        });
      },
      prefix,
    });
  });
  afterAll(async () => {
    const keys = await client.keys(`${prefix}*`);
    if (keys.length) await client.del(keys);
    await client.quit();
  });

  const atNext: number[] = [];
  /** Round trips (distinct waves) among the commands sent by the time the relay ran. */
  const tripsAtNext: number[] = [];
  const channels = [{ id: 1, models: 'gpt-5', key: 'k1' }, { id: 2, models: 'gpt-5', key: 'k2' }];
  const make = (coalesce = true) => createApp({ channels, store, syncIntervalMs: 60_000, affinity: { coalesce } }, {
    handler: (_req, res) => {
      atNext.push(sent.length); // commands sent by the time the relay runs
      tripsAtNext.push(new Set(waves).size);
      res.json({ channel: res.locals.channel?.id, affinity: res.locals.distribution?.affinity ?? null });
    },
  });

  test.each([
    ['coalesce (default): a miss costs 2 (lookup, reservation), confirmed by one write after the response', true, 2],
    ['without coalesce: a miss costs 1, pinned by one write after the response', false, 1],
  ])('%s; no rule 0, a hit 1, and a used pin writes nothing after', async (_label, coalesce, missCost) => {
    const { app, mw } = make(coalesce);
    try {
      await new Promise((r) => setTimeout(r, 100)); // the startup health sync is not a request's cost
      // The first use of a Lua script may cost an EVALSHA miss plus an EVAL (script cache warm-up).
      await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: `warm-up-${coalesce}` }).expect(200);
      await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: `warm-up-${coalesce}` }).expect(200);
      await new Promise((r) => setTimeout(r, 50));
      const session = `s-${Date.now()}-${coalesce}`;
      sent = [];
      await request(app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(200);
      expect(atNext.pop()).toBe(0);

      sent = [];
      const miss = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: session }).expect(200);
      expect(miss.body.affinity).toMatchObject({ hit: false });
      expect(atNext.pop()).toBe(missCost);
      await new Promise((r) => setTimeout(r, 50));
      expect(sent.length).toBe(missCost + 1); // then the pin written (or the reservation confirmed) after the response finished
      expect(sent.every((c) => c[0] === 'EVALSHA')).toBe(true);

      sent = [];
      const hit = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: session }).expect(200);
      expect(hit.body.affinity).toMatchObject({ hit: true, used: true });
      expect(hit.body.channel).toBe(miss.body.channel);
      expect(atNext.pop()).toBe(1);
      await new Promise((r) => setTimeout(r, 50));
      expect(sent.length).toBe(1); // the sliding TTL was refreshed by the lookup itself
    } finally {
      await mw.shutdown();
    }
  });

  test('with limits: a hit costs 2 round trips (the lookup, the slot) and a miss 2 (the slot and the reservation share one)', async () => {
    const limited = [{ id: 1, models: 'gpt-5', key: 'k1', limits: { maxConcurrency: 50, rpm: 1000 } }, { id: 2, models: 'gpt-5', key: 'k2', limits: { maxConcurrency: 50 } }];
    const { app, mw } = createApp({ channels: limited, store, syncIntervalMs: 60_000 }, {
      handler: (_req, res) => {
        atNext.push(sent.length);
        tripsAtNext.push(new Set(waves).size);
        res.json({ channel: res.locals.channel?.id, affinity: res.locals.distribution?.affinity ?? null });
      },
    });
    try {
      await new Promise((r) => setTimeout(r, 100));
      for (let i = 0; i < 2; i++) await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 'warm-up-limits' }).expect(200);
      await new Promise((r) => setTimeout(r, 50));
      const session = `s-limits-${Date.now()}`;
      sent = [];
      waves = [];
      const miss = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: session }).expect(200);
      expect(miss.body.affinity).toMatchObject({ hit: false });
      expect(atNext.pop()).toBe(3); // lookup, then slot + reservation together
      expect(tripsAtNext.pop()).toBe(2);
      await new Promise((r) => setTimeout(r, 50));

      sent = [];
      waves = [];
      const hit = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: session }).expect(200);
      expect(hit.body.affinity).toMatchObject({ hit: true, used: true });
      expect(atNext.pop()).toBe(2);
      expect(tripsAtNext.pop()).toBe(2);
      await new Promise((r) => setTimeout(r, 50));
      expect(sent.map((c) => c[0])).toEqual(['EVALSHA', 'EVALSHA', 'ZREM']); // after the response: the slot given back
    } finally {
      await mw.shutdown();
    }
  });
});
