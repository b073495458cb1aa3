// RedisStore against a real redis-server: the Store contract through node-redis v5 (RESP2 and
// RESP3) and through the raw sendCommand form, then what is specific to Redis: options, key
// layout, Lua reloads, reply shapes, timeouts and back-off, subscriptions.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createClient } from 'redis';
import { ruleNameOfPinKey } from '../../lib/affinity/layout';
import { DistributorError } from '../../lib/errors';
import {
  RedisStore, RedisStoreUnavailableError, parseEvent, type RedisStoreOptions, type RedisSubscribeFunction,
} from '../../lib/stores/redis';
import type { StoreEvent } from '../../lib/stores/store';
import {
  CLEAR_COOLDOWN, CLEAR_PIN, GET_PIN, LOAD_HEALTH, RECORD_FAILURE, SET_OVERRIDE, SET_PIN,
} from '../../lib/stores/redis-scripts';
import { ChannelStatus } from '../../lib/types';
import { describeRedis, flushPrefix, sleep, waitFor } from '../helpers/redis';
import { pinKey, redisStorePair, runStoreContract } from './store-contract';

type Client = ReturnType<typeof createClient>;
const BASE = 'ecd-test-redis-store:';

async function connect(url: string, resp3 = false): Promise<Client> {
  const c = createClient(resp3 ? { url, RESP: 3 } : { url });
  c.on('error', () => undefined);
  await c.connect();
  return c as Client;
}

/** An ioredis-style subscribe function, built on a node-redis subscriber (exercises the function form). */
function subscribeFunction(sub: Client): RedisSubscribeFunction {
  return (channel, onMessage) => {
    const listener = (message: string) => onMessage(message);
    void sub.subscribe(channel, listener);
    return () => sub.unsubscribe(channel, listener);
  };
}

describeRedis('RedisStore', (url) => {
  const clients: Client[] = [];
  let a: Client; // commands, instance A
  let b: Client; // commands, instance B
  let subA: Client;
  let subB: Client;
  let r3a: Client; // RESP3 clients
  let r3b: Client;
  const send = (args: string[]) => a.sendCommand(args);

  beforeAll(async () => {
    [a, b, subA, subB] = await Promise.all([connect(url), connect(url), connect(url), connect(url)]);
    [r3a, r3b] = await Promise.all([connect(url, true), connect(url, true)]);
    clients.push(a, b, subA, subB, r3a, r3b);
  });
  afterAll(async () => {
    await flushPrefix(send, BASE);
    await Promise.all(clients.map((c) => c.quit().catch(() => undefined)));
  });

  /** Two stores over one prefix (two instances), built by `make`. */
  const harness = (make: (prefix: string, side: 'a' | 'b') => RedisStoreOptions) => redisStorePair(BASE, make, (prefix) => flushPrefix(send, prefix));

  runStoreContract('RedisStore (node-redis v5 client)', harness((prefix, side) => ({
    client: side === 'a' ? a : b, subscriber: side === 'a' ? subA : subB, prefix, timeoutMs: 1000,
  })));

  runStoreContract('RedisStore (node-redis v5, RESP3)', harness((prefix, side) => ({
    client: side === 'a' ? r3a : r3b, prefix, timeoutMs: 1000,
  })), { events: false }); // no subscriber: polling only

  runStoreContract('RedisStore (sendCommand, ioredis style)', harness((prefix, side) => {
    const c = side === 'a' ? a : b;
    return {
      sendCommand: (args: string[]) => c.sendCommand(args),
      subscriber: subscribeFunction(side === 'a' ? subA : subB),
      prefix,
      timeoutMs: 1000,
    };
  }));

  describe('options', () => {
    test('exactly one of client, sendCommand, sendCommandCluster', () => {
      const sendCommand = (args: string[]) => a.sendCommand(args);
      const sendCommandCluster = () => Promise.resolve(null);
      const bad: unknown[] = [
        {},
        { client: a, sendCommand },
        { sendCommand, sendCommandCluster },
        { client: a, sendCommand, sendCommandCluster },
        { client: {} },
        { sendCommand: 'nope' },
        { client: a, timeoutMs: 0 },
        { client: a, timeoutMs: Number.NaN },
        { client: a, backoffMs: -1 },
        { client: a, failuresBeforeBackoff: 0 },
        { client: a, failuresBeforeBackoff: 1.5 },
        { client: a, failuresBeforeBackoff: -1 },
        { client: a, failuresBeforeBackoff: Number.NaN },
        { client: a, failuresBeforeBackoff: '2' },
        { client: a, prefix: 5 },
        { client: a, subscriber: {} },
        { client: a, masters: [] },
      ];
      for (const o of bad) {
        expect(() => new RedisStore(o as RedisStoreOptions)).toThrow(DistributorError);
        try {
          new RedisStore(o as RedisStoreOptions);
        } catch (e) {
          expect((e as DistributorError).code).toBe('ERR_DIST_INVALID_STORE');
        }
      }
      expect(() => new (RedisStore as unknown as new () => RedisStore)()).toThrow(DistributorError);
    });

    test('defaults; subscribe only with a subscriber; no client is ever closed', async () => {
      const s = new RedisStore({ client: a });
      expect(s.prefix).toBe('ecd:');
      expect(s.timeoutMs).toBe(200);
      expect(s.backoffMs).toBe(1000);
      expect(s.failuresBeforeBackoff).toBe(2);
      expect(new RedisStore({ client: a, failuresBeforeBackoff: 1 }).failuresBeforeBackoff).toBe(1);
      expect(s.localKeys).toBe(false);
      expect(s.subscribe).toBeUndefined();
      const withSub = new RedisStore({ client: a, subscriber: subA, prefix: `${BASE}x:` });
      expect(typeof withSub.subscribe).toBe('function');
      const off = withSub.subscribe?.(() => undefined);
      off?.();
      s.shutdown();
      withSub.shutdown();
      expect(a.isOpen).toBe(true);
      expect(subA.isOpen).toBe(true);
    });

    test('the store never imports a Redis client at runtime', () => {
      for (const f of ['redis.ts', 'redis-scripts.ts', 'redis-reply.ts']) {
        const src = readFileSync(path.join(__dirname, '..', '..', 'lib', 'stores', f), 'utf8');
        expect(src).not.toMatch(/require\(['"](redis|ioredis|@redis\/[^'"]+)['"]\)/);
        expect(src).not.toMatch(/^import (?!type )[^;]*from ['"](redis|ioredis|@redis\/[^'"]+)['"]/m);
      }
    });
  });

  describe('key layout', () => {
    test('pins under prefix + aff:..., health in {health}-tagged hashes, events on prefix + events', async () => {
      const prefix = `${BASE}layout:`;
      const s = new RedisStore({ client: a, prefix });
      const k = pinKey();
      await s.setPin(k, '12', 5000);
      const pttl = Number(await a.sendCommand(['PTTL', prefix + k]));
      expect(pttl).toBeGreaterThan(4000);
      expect(pttl).toBeLessThanOrEqual(5000);
      // `<value>:<write time>`: the write time orders late writes (never over a newer pin)
      const t = Date.now();
      expect(await a.sendCommand(['GET', prefix + k])).toMatch(/^12:\d{13}$/);
      expect(Math.abs(Number(String(await a.sendCommand(['GET', prefix + k])).split(':')[1]) - t)).toBeLessThan(1000);
      expect(await s.getPin(k, 60_000)).toBe('12');
      expect(Number(await a.sendCommand(['PTTL', prefix + k]))).toBeGreaterThan(50_000);
      await s.recordFailure(3, { failures: 2, windowMs: 1000, durationMs: 1000 }, Date.now());
      await s.recordFailure(4, { failures: 1, windowMs: 1000, durationMs: 60_000 }, Date.now());
      await s.setOverride(5, { status: ChannelStatus.AutoDisabled, disabledKeys: [0, 1] });
      const keys = ((await a.sendCommand(['KEYS', `${prefix}*`])) as string[]).sort();
      expect(keys).toEqual([prefix + k, `${prefix}{health}:cool`, `${prefix}{health}:fail`, `${prefix}{health}:keys`, `${prefix}{health}:status`].sort());
      expect(await a.sendCommand(['HGET', `${prefix}{health}:status`, '5'])).toBe('3');
      expect(await a.sendCommand(['HGET', `${prefix}{health}:keys`, '5'])).toBe('0,1');
      // Why the store never asks for HGETALL: under RESP3 a raw HGETALL is a map, not an array.
      expect(Array.isArray(await r3a.sendCommand(['HGETALL', `${prefix}{health}:keys`]))).toBe(false);
      expect(Array.isArray(await a.sendCommand(['HGETALL', `${prefix}{health}:keys`]))).toBe(true);
      // The distributor hashes affinity values; the store adds nothing readable either.
      expect(k).toMatch(/^aff:codex%20cli%20trace:[A-Za-z0-9_-]{43}$/);
      await flushPrefix(send, prefix);
    });

    test('a prefix with glob characters only ever matches its own keys', async () => {
      const mine = new RedisStore({ client: a, prefix: `${BASE}[g]*?:` });
      const other = new RedisStore({ client: a, prefix: `${BASE}[g]x?:` });
      await mine.setPin(pinKey(), '1', 10_000);
      await other.setPin(pinKey(), '2', 10_000);
      expect(await mine.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 1 });
      expect(await mine.clearPins()).toBe(1);
      expect(await other.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 1 });
      await other.clearPins();
    });

    test('a sendCommandCluster store needs masters for clearPins/countPins', async () => {
      const s = new RedisStore({ sendCommandCluster: ({ command }) => a.sendCommand(command), prefix: `${BASE}c:` });
      await expect(s.countPins(ruleNameOfPinKey)).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_STORE' });
      await expect(s.clearPins()).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_STORE' });
      expect(await s.getPin(pinKey())).toBeNull(); // not an outage: no back-off started
      const withMasters = new RedisStore({
        sendCommandCluster: ({ command }) => a.sendCommand(command), masters: () => [a], prefix: `${BASE}c:`,
      });
      await withMasters.setPin(pinKey(), '1', 10_000);
      expect(await withMasters.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 1 });
      expect(await withMasters.clearPins()).toBe(1);
    });
  });

  describe('scripts and replies', () => {
    test('the SHAs computed locally are the ones Redis computes', async () => {
      for (const sc of [GET_PIN, CLEAR_PIN, SET_PIN, RECORD_FAILURE, CLEAR_COOLDOWN, SET_OVERRIDE, LOAD_HEALTH]) {
        expect(await a.sendCommand(['SCRIPT', 'LOAD', sc.source])).toBe(sc.sha);
      }
    });

    test('NOSCRIPT after SCRIPT FLUSH: EVAL within the same call, which caches the script again', async () => {
      const prefix = `${BASE}noscript:`;
      const s = new RedisStore({ client: a, prefix, timeoutMs: 1000 });
      const k = pinKey();
      await s.setPin(k, '3', 10_000);
      await a.sendCommand(['SCRIPT', 'FLUSH']);
      expect(await s.getPin(k, 10_000)).toBe('3');
      expect(await a.sendCommand(['SCRIPT', 'EXISTS', GET_PIN.sha])).toEqual([1]);
      await a.sendCommand(['SCRIPT', 'FLUSH']);
      // Concurrent calls after a flush all succeed.
      const results = await Promise.all([s.clearPin(k, '3'), s.clearPin(k, '3'), s.loadHealth(), s.loadHealth()]);
      expect(results.slice(0, 2).filter(Boolean)).toHaveLength(1);
      await a.sendCommand(['SCRIPT', 'FLUSH']);
      expect(await s.recordFailure(1, { failures: 1, windowMs: 1, durationMs: 60_000 }, Date.now())).not.toBeNull();
      await flushPrefix(send, prefix);
    });

    test('Buffer replies (a client configured for buffers) are normalised', async () => {
      const toBuffers = (v: unknown): unknown => (typeof v === 'string' ? Buffer.from(v) : Array.isArray(v) ? v.map(toBuffers) : v);
      const prefix = `${BASE}buffers:`;
      const s = new RedisStore({ sendCommand: async (args) => toBuffers(await a.sendCommand(args)), prefix, timeoutMs: 1000 });
      const k = pinKey();
      await s.setPin(k, '21', 10_000);
      expect(await s.getPin(k)).toBe('21');
      expect(await s.getPin(k, 10_000)).toBe('21');
      const until = await s.recordFailure(8, { failures: 1, windowMs: 1, durationMs: 60_000 }, Date.now());
      await s.setOverride(9, { status: ChannelStatus.ManuallyDisabled, disabledKeys: [2] });
      expect(await s.loadHealth()).toEqual({ cooldowns: { 8: until }, statuses: { 9: 2 }, disabledKeys: { 9: [2] }, marks: [] });
      expect(await s.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 1 });
      await flushPrefix(send, prefix);
    });

    test('an unexpected reply shape is an error, not a wrong answer', async () => {
      const s = new RedisStore({ sendCommand: async () => new Map([['a', '1']]), backoffMs: 0 });
      await expect(s.loadHealth()).rejects.toThrow(TypeError);
      // a pin reply other than nil, a bulk string or an integer is an error; pin values are
      // opaque text, so any text reply is a value (the distributor treats a foreign one as a miss)
      for (const reply of [['7'], new Map([['a', '1']]), { v: '7' }, true]) {
        const t = new RedisStore({ sendCommand: async () => reply, backoffMs: 0 });
        await expect(t.getPin(pinKey())).rejects.toThrow(TypeError);
        await expect(t.getPin(pinKey(), 1000)).rejects.toThrow(TypeError);
      }
    });

    test('parseEvent accepts only well-formed events', () => {
      expect(parseEvent('{"type":"cooldown","channelId":1,"until":5}')).toEqual({ type: 'cooldown', channelId: 1, until: 5 });
      expect(parseEvent(Buffer.from('{"type":"status","channelId":1,"status":null}'))).toEqual({ type: 'status', channelId: 1, status: null });
      for (const bad of ['', 'x', 'null', '{"type":"status","channelId":1,"status":9}', '{"type":"keys","channelId":1,"disabledKeys":["a"]}',
        '{"type":"cooldown","channelId":"1","until":5}', '{"type":"other","channelId":1}']) {
        expect(parseEvent(bad)).toBeNull();
      }
    });

    test('garbage on the events channel is ignored', async () => {
      const prefix = `${BASE}garbage:`;
      const s = new RedisStore({ client: a, subscriber: subA, prefix });
      const events: StoreEvent[] = [];
      const off = s.subscribe?.((e) => events.push(e));
      await sleep(100);
      await a.sendCommand(['PUBLISH', `${prefix}events`, 'not json']);
      await a.sendCommand(['PUBLISH', `${prefix}events`, '{"type":"status","channelId":2,"status":3}']);
      await waitFor(() => events.length === 1);
      expect(events).toEqual([{ type: 'status', channelId: 2, status: 3 }]);
      off?.();
      s.shutdown();
    });

    test('a subscription that fails to start is reported to onError (polling still covers)', async () => {
      const errors: string[] = [];
      const s = new RedisStore({
        client: a,
        subscriber: { subscribe: () => Promise.reject(new Error('not in subscribe mode')), unsubscribe: () => Promise.resolve() },
        onError: (e, op) => errors.push(`${op}: ${e.message}`),
      });
      const off = s.subscribe?.(() => undefined);
      await waitFor(() => errors.length === 1);
      expect(errors).toEqual(['subscribe: not in subscribe mode']);
      off?.();
    });
  });

  describe('timeouts and back-off', () => {
    test('a hanging call times out; calls then fail fast until one probe succeeds', async () => {
      let hang = true;
      let calls = 0;
      const s = new RedisStore({
        sendCommand: (args) => {
          calls++;
          return hang ? new Promise<unknown>(() => undefined) : a.sendCommand(args);
        },
        prefix: `${BASE}timeout:`,
        timeoutMs: 100,
        backoffMs: 300,
      });
      const k = pinKey();
      // Concurrent calls in flight when Redis hangs each cost one timeout, not more.
      let t = Date.now();
      const first = await Promise.allSettled([s.getPin(k), s.getPin(k, 1000), s.setPin(k, '1', 10_000)]);
      const took = Date.now() - t;
      expect(took).toBeGreaterThanOrEqual(95);
      expect(took).toBeLessThan(250);
      for (const r of first) {
        expect(r.status).toBe('rejected');
        expect((r as PromiseRejectedResult).reason).toBeInstanceOf(RedisStoreUnavailableError);
        expect((r as PromiseRejectedResult).reason.reason).toBe('timeout');
      }
      expect(calls).toBe(3);
      // Inside the back-off window: immediate rejection, Redis not called.
      t = Date.now();
      await expect(s.loadHealth()).rejects.toMatchObject({ reason: 'backoff', code: 'ERR_STORE_UNAVAILABLE' });
      await expect(s.recordFailure(1, { failures: 1, windowMs: 1, durationMs: 1 }, Date.now())).rejects.toMatchObject({ reason: 'backoff' });
      expect(Date.now() - t).toBeLessThan(20);
      expect(calls).toBe(3);
      // Still hanging after the window: one probe pays one timeout, the others fail fast.
      await sleep(320);
      t = Date.now();
      const second = await Promise.allSettled([s.getPin(k), s.getPin(k)]);
      expect(calls).toBe(4);
      expect((second[0] as PromiseRejectedResult).reason.reason).toBe('timeout');
      expect((second[1] as PromiseRejectedResult).reason.reason).toBe('backoff');
      // Recovered: the next probe after the window succeeds and closes the back-off.
      hang = false;
      await expect(s.getPin(k)).rejects.toMatchObject({ reason: 'backoff' });
      await sleep(320);
      const third = await Promise.allSettled([s.getPin(k), s.getPin(k)]);
      expect(third[0]).toEqual({ status: 'fulfilled', value: null });
      expect((third[1] as PromiseRejectedResult).reason.reason).toBe('backoff');
      // The back-off has ended: the setPin that timed out in the first wave is retried once and lands.
      await waitFor(async () => (await s.getPin(k)) === '1', 2000);
      expect(s.pendingPinWrites).toBe(0);
      await s.setPin(k, '2', 1000);
      expect(await s.getPin(k)).toBe('2');
      await flushPrefix(send, `${BASE}timeout:`);
    });

    test('rejected calls (connection errors) also start the back-off; backoffMs 0 disables it', async () => {
      let fail = true;
      const s = new RedisStore({
        sendCommand: (args) => (fail ? Promise.reject(new Error('connection lost')) : a.sendCommand(args)),
        timeoutMs: 100,
        backoffMs: 200,
      });
      await expect(s.getPin(pinKey())).rejects.toThrow('connection lost');
      expect(s.backingOff).toBe(false); // one failure: not yet (failuresBeforeBackoff 2)
      await expect(s.getPin(pinKey())).rejects.toThrow('connection lost');
      expect(s.backingOff).toBe(true);
      fail = false;
      await expect(s.getPin(pinKey())).rejects.toMatchObject({ reason: 'backoff' });
      await sleep(220);
      expect(await s.getPin(pinKey())).toBeNull();

      let n = 0;
      const noBackoff = new RedisStore({ sendCommand: () => (++n <= 3 ? Promise.reject(new Error('blip')) : a.sendCommand(['PING']).then(() => null)), backoffMs: 0, failuresBeforeBackoff: 1 });
      for (let i = 0; i < 3; i++) await expect(noBackoff.getPin(pinKey())).rejects.toThrow('blip');
      expect(await noBackoff.getPin(pinKey())).toBeNull();
    });

    test('a sendCommand that throws synchronously is a rejection, not a crash', async () => {
      const s = new RedisStore({ sendCommand: () => { throw new Error('sync boom'); }, backoffMs: 0 });
      await expect(s.setPin(pinKey(), '1', 1000)).rejects.toThrow('sync boom');
    });
  });
});
