// Issue 5's budget: at most one Redis round trip before next(), whatever the affinity outcome,
// counted on the wire through a counting sendCommand (RedisStore on a real redis-server).
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
  let store: RedisStore;
  const prefix = `ecd-rt-${process.pid}:`;
  beforeAll(async () => {
    await client.connect();
    store = new RedisStore({
      sendCommand: (args: string[]) => {
        sent.push(args);
        return client.sendCommand(args);
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
  const channels = [{ id: 1, models: 'gpt-5', key: 'k1' }, { id: 2, models: 'gpt-5', key: 'k2' }];
  const make = () => createApp({ channels, store, syncIntervalMs: 60_000 }, {
    handler: (_req, res) => {
      atNext.push(sent.length); // commands sent by the time the relay runs
      res.json({ channel: res.locals.channel?.id, affinity: res.locals.distribution?.affinity ?? null });
    },
  });

  test('steady state: no rule, a miss, a hit cost 0, 1, 1 commands before next(); a used pin writes nothing after', async () => {
    const { app, mw } = make();
    try {
      await new Promise((r) => setTimeout(r, 100)); // the startup health sync is not a request's cost
      // The first use of a Lua script may cost an EVALSHA miss plus an EVAL (script cache warm-up).
      await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 'warm-up' }).expect(200);
      const session = `s-${Date.now()}`;
      sent = [];
      await request(app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(200);
      expect(atNext.pop()).toBe(0);

      sent = [];
      const miss = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: session }).expect(200);
      expect(miss.body.affinity).toMatchObject({ hit: false });
      expect(atNext.pop()).toBe(1);
      await new Promise((r) => setTimeout(r, 50));
      expect(sent.length).toBe(2); // the lookup, then the pin written after the response finished
      expect(sent[1][0]).toBe('EVALSHA');

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
});
