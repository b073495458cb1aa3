// RedisStore under faults (API 11.2), against a redis-server this suite starts itself: error
// replies (a real OOM, a real WRONGTYPE) against transport failures, one slow call against two
// failures in a row, pin writes retried once after the back-off, late writes ordered by their
// write time, and pins written by 0.1 (bare integers). Faults are injected by a sendCommand
// wrapper around a real node-redis client (the commands that pass go to the real server).
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createClient } from 'redis';
import { ruleNameOfPinKey } from '../../lib/affinity/layout';
import { RedisStore, RedisStoreUnavailableError, type RedisStoreOptions } from '../../lib/stores/redis';
import { isErrorReply } from '../../lib/stores/redis-reply';
import { hasRedisServer, sleep, startRedisServer, waitFor, type OwnRedis } from '../helpers/redis';
import { pinKey } from './store-contract';

type Client = ReturnType<typeof createClient>;

/** What the wrapper does with one call. */
type Fault =
  | { kind: 'pass' }
  /** The command runs at once; its reply reaches the store `ms` later. */
  | { kind: 'slowReply'; ms: number }
  /** The command reaches Redis `ms` later (a write delivered late). */
  | { kind: 'slowSend'; ms: number }
  /** Never sent, never answered (a hung connection). */
  | { kind: 'hang' }
  /** Rejected without reaching Redis (the connection broke). */
  | { kind: 'reject'; error: unknown };

/** A sendCommand around a real client, with faults chosen per call, and a log of what was asked. */
function faulty(client: Client) {
  const asked: string[][] = [];
  const once: Fault[] = [];
  let rule: (args: string[]) => Fault = () => ({ kind: 'pass' });
  const send = (args: string[]): Promise<unknown> => {
    asked.push(args);
    const f = once.shift() ?? rule(args);
    switch (f.kind) {
      case 'pass':
        return client.sendCommand(args);
      case 'slowReply': {
        const reply = client.sendCommand(args);
        return sleep(f.ms).then(() => reply);
      }
      case 'slowSend':
        return sleep(f.ms).then(() => client.sendCommand(args));
      case 'hang':
        return new Promise<unknown>(() => undefined);
      case 'reject':
        return Promise.reject(f.error);
    }
  };
  return {
    send,
    asked,
    /** Faults for the next calls, in order. */
    next: (...faults: Fault[]) => {
      once.push(...faults);
    },
    /** The fault for every call not covered by `next`. */
    always: (r: (args: string[]) => Fault) => {
      rule = r;
    },
    /** Pin writes (SET_PIN script calls) asked for this Redis key. */
    pinWrites: (key: string) => asked.filter((a) => (a[0] === 'EVALSHA' || a[0] === 'EVAL') && a[3] === key && a.length === 7).length,
  };
}

const isPinWrite = (args: string[]) => (args[0] === 'EVALSHA' || args[0] === 'EVAL') && args.length === 7;

const available = hasRedisServer();
if (!available) {
  if (process.env.CI === 'true') throw new Error('redis-server is required for the RedisStore fault tests under CI=true');
  // eslint-disable-next-line no-console
  console.warn('\n!!! SKIPPED "RedisStore under faults": redis-server is not installed\n');
}

(available ? describe : describe.skip)('RedisStore under faults', () => {
  let redis: OwnRedis;
  let admin: Client;
  const clients: Client[] = [];
  let seq = 0;

  const connect = async (): Promise<Client> => {
    const c = createClient({ url: redis.url });
    c.on('error', () => undefined);
    await c.connect();
    clients.push(c as Client);
    return c as Client;
  };
  const prefix = () => `faults-${++seq}:`;
  const raw = (k: string) => admin.sendCommand(['GET', k]) as Promise<string | null>;

  beforeAll(async () => {
    redis = await startRedisServer();
    admin = await connect();
  }, 20_000);
  afterAll(async () => {
    for (const c of clients) {
      try {
        c.destroy();
      } catch {
        /* already closed */
      }
    }
    await redis?.kill();
  });

  describe('error replies are answers, not outages', () => {
    test('out of memory (writes fail, reads work): 50 failing setPins start no back-off; pins already there keep being read and cleared', async () => {
      const client = await connect();
      const p = prefix();
      const stores = [
        new RedisStore({ client, prefix: p, timeoutMs: 1000, backoffMs: 5000 }),
        new RedisStore({ sendCommand: (args) => client.sendCommand(args), prefix: p, timeoutMs: 1000, backoffMs: 5000 }),
      ];
      const pinned = [pinKey(), pinKey()];
      await stores[0].setPin(pinned[0], '3', 60_000);
      await stores[1].setPin(pinned[1], '4', 60_000);
      await admin.sendCommand(['CONFIG', 'SET', 'maxmemory-policy', 'noeviction']);
      await admin.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      try {
        for (const s of stores) {
          for (let i = 0; i < 50; i++) {
            const e = await s.setPin(pinKey(), '9', 60_000).then(() => null, (err: unknown) => err);
            expect(e).toBeInstanceOf(Error);
            expect((e as Error).message).toMatch(/^OOM /);
            expect(e).not.toBeInstanceOf(RedisStoreUnavailableError);
          }
          // reads (with and without the sliding TTL) answer at once, from Redis
          expect(await s.getPin(pinned[0], 60_000)).toBe('3');
          expect(await s.getPin(pinned[1])).toBe('4');
          expect(await s.loadHealth()).toEqual({ cooldowns: {}, statuses: {}, disabledKeys: {}, marks: [] });
          expect(s.backingOff).toBe(false);
          expect(s.pendingPinWrites).toBe(0); // an error reply is not retried
        }
        expect(await stores[1].clearPin(pinned[1], '4')).toBe(true); // DEL is allowed under OOM
        expect(await stores[0].getPin(pinned[1])).toBeNull();
        expect(stores.every((s) => !s.backingOff)).toBe(true);
      } finally {
        await admin.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      }
      await stores[0].setPin(pinned[1], '5', 60_000);
      expect(await stores[1].getPin(pinned[1])).toBe('5');
    });

    test('WRONGTYPE, READONLY, NOSCRIPT-like rejections and a string reply fail one call; transport errors do count', async () => {
      const client = await connect();
      const p = prefix();
      const k = pinKey();
      await admin.sendCommand(['HSET', p + k, 'f', '1']); // a key of the wrong type: a real WRONGTYPE reply
      const s = new RedisStore({ client, prefix: p, timeoutMs: 1000, backoffMs: 5000, failuresBeforeBackoff: 1 });
      for (let i = 0; i < 3; i++) await expect(s.getPin(k)).rejects.toThrow(/^WRONGTYPE/);
      expect(await s.getPin(pinKey())).toBeNull(); // not failed fast: no back-off
      await expect(s.setPin(k, '1', 1000)).rejects.toThrow(/^WRONGTYPE/); // the compare-and-set reads the key first
      expect(s.backingOff).toBe(false);

      // a raw sender that rejects with the server's error text (any client, any wrapping)
      const f = faulty(client);
      const t = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 1000, backoffMs: 5000, failuresBeforeBackoff: 1 });
      f.next(
        { kind: 'reject', error: new Error("READONLY You can't write against a read only replica.") },
        { kind: 'reject', error: 'OOM command not allowed when used memory > \'maxmemory\'.' },
        { kind: 'reject', error: new Error('BUSY Redis is busy running a script.') },
        { kind: 'reject', error: new Error('LOADING Redis is loading the dataset in memory') },
      );
      for (let i = 0; i < 4; i++) await expect(t.setPin(pinKey(), '1', 1000)).rejects.toThrow(/^[A-Z]+ /);
      expect(await t.getPin(pinKey())).toBeNull();
      expect(t.backingOff).toBe(false);
      expect(t.pendingPinWrites).toBe(0);
      // a transport failure is not an answer: with failuresBeforeBackoff 1 it starts the back-off at once
      f.next({ kind: 'reject', error: Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:1'), { code: 'ECONNREFUSED', errno: -111, syscall: 'connect' }) });
      await expect(t.getPin(pinKey())).rejects.toThrow('ECONNREFUSED');
      expect(t.backingOff).toBe(true);
    });

    test('the errors real clients throw are told apart: node-redis ErrorReply vs a closed client', async () => {
      const client = await connect();
      const reply = await client.sendCommand(['NOSUCHCOMMAND']).then(() => null, (e: unknown) => e);
      expect(isErrorReply(reply)).toBe(true);
      const closed = await connect();
      closed.destroy();
      const gone = await closed.sendCommand(['PING']).then(() => null, (e: unknown) => e);
      expect(gone).toBeInstanceOf(Error);
      expect(isErrorReply(gone)).toBe(false);
      for (const transport of [new Error('Socket closed unexpectedly'), new Error('Connection is closed.'), new Error('ECONNRESET'), new Error('connection lost'),
        new RedisStoreUnavailableError('RedisStore: getPin timed out after 200 ms', 'timeout')]) {
        expect(isErrorReply(transport)).toBe(false);
      }
      for (const answered of ['ERR unknown command', 'NOSCRIPT No matching script.', 'WRONGTYPE Operation against a key', 'EXECABORT Transaction discarded']) {
        expect(isErrorReply(new Error(answered))).toBe(true);
      }
    });
  });

  describe('failuresBeforeBackoff', () => {
    test('one slow call (a 300 ms stall past timeoutMs 100) fails that call only: the next pin write lands', async () => {
      const client = await connect();
      const f = faulty(client);
      const p = prefix();
      const s = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 100, backoffMs: 1000 });
      const k = pinKey();
      f.next({ kind: 'slowReply', ms: 300 });
      await expect(s.getPin(k, 60_000)).rejects.toMatchObject({ reason: 'timeout' });
      await s.setPin(k, '7', 60_000); // this request's pin write is not dropped
      expect(await s.getPin(k)).toBe('7');
      expect(s.backingOff).toBe(false);
      expect(s.failuresBeforeBackoff).toBe(2);
    });

    test('two transport failures in a row start the back-off; a success in between resets the count', async () => {
      const client = await connect();
      const f = faulty(client);
      const s = new RedisStore({ sendCommand: f.send, prefix: prefix(), timeoutMs: 100, backoffMs: 300 });
      const broken = () => ({ kind: 'reject' as const, error: new Error('Socket closed unexpectedly') });
      f.next(broken(), { kind: 'pass' }, broken(), { kind: 'pass' }, { kind: 'slowReply', ms: 250 });
      await expect(s.getPin(pinKey())).rejects.toThrow('Socket closed');
      expect(await s.getPin(pinKey())).toBeNull();
      await expect(s.getPin(pinKey())).rejects.toThrow('Socket closed');
      expect(await s.getPin(pinKey())).toBeNull();
      await expect(s.getPin(pinKey())).rejects.toMatchObject({ reason: 'timeout' });
      expect(s.backingOff).toBe(false); // never two in a row
      expect(await s.getPin(pinKey())).toBeNull();

      f.next(broken(), broken());
      await expect(s.getPin(pinKey())).rejects.toThrow('Socket closed');
      expect(s.backingOff).toBe(false);
      await expect(s.getPin(pinKey())).rejects.toThrow('Socket closed');
      expect(s.backingOff).toBe(true);
      const before = f.asked.length;
      await expect(s.getPin(pinKey())).rejects.toMatchObject({ reason: 'backoff' });
      expect(f.asked.length).toBe(before); // failed fast: Redis not asked

      // two timeouts in a row do too
      await sleep(320);
      expect(await s.getPin(pinKey())).toBeNull(); // the probe ends the back-off
      f.next({ kind: 'slowReply', ms: 250 }, { kind: 'slowReply', ms: 250 });
      await expect(s.getPin(pinKey())).rejects.toMatchObject({ reason: 'timeout' });
      await expect(s.getPin(pinKey())).rejects.toMatchObject({ reason: 'timeout' });
      expect(s.backingOff).toBe(true);
    });
  });

  describe('pin writes owed a retry', () => {
    test('a setPin that timed out and one skipped by the back-off are each retried once after the back-off, and land', async () => {
      const client = await connect();
      const f = faulty(client);
      const p = prefix();
      const s = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 100, backoffMs: 300 });
      const [timedOut, skipped, moved] = [pinKey(), pinKey(), pinKey()];
      f.always(() => ({ kind: 'hang' }));
      const t0 = Date.now();
      await expect(s.setPin(timedOut, '1', 60_000)).rejects.toMatchObject({ reason: 'timeout' });
      await expect(s.getPin(pinKey())).rejects.toBeInstanceOf(RedisStoreUnavailableError); // the 2nd timeout (0.1: already 'backoff')
      await expect(s.setPin(skipped, '2', 60_000)).rejects.toMatchObject({ reason: 'backoff' });
      // only the latest write of a key is owed
      await expect(s.setPin(moved, '3', 60_000)).rejects.toMatchObject({ reason: 'backoff' });
      await expect(s.setPin(moved, '4', 60_000)).rejects.toMatchObject({ reason: 'backoff' });

      f.always(() => ({ kind: 'pass' }));
      await sleep(320);
      expect(await s.getPin(pinKey())).toBeNull(); // the probe: Redis answers, the back-off ends
      await waitFor(async () => (await raw(p + moved)) !== null && (await raw(p + timedOut)) !== null && (await raw(p + skipped)) !== null, 2000);
      expect(await s.getPin(timedOut)).toBe('1');
      expect(await s.getPin(skipped)).toBe('2');
      expect(await s.getPin(moved)).toBe('4');
      expect(s.pendingPinWrites).toBe(0);
      expect(s.backingOff).toBe(false);
      // each write keeps its own write time and what is left of its TTL
      expect(Number((await raw(p + timedOut))?.split(':')[1])).toBeGreaterThanOrEqual(t0);
      expect(Number((await raw(p + timedOut))?.split(':')[1])).toBeLessThan(t0 + 100);
      expect(Number(await admin.sendCommand(['PTTL', p + timedOut]))).toBeLessThanOrEqual(60_000 - (Date.now() - t0) + 50);
      // retried once: the original attempt (hung) plus one retry; 3 -> 4 for `moved` was one retry of the latest
      expect(f.pinWrites(p + timedOut)).toBe(2);
      expect(f.pinWrites(p + skipped)).toBe(1);
      expect(f.pinWrites(p + moved)).toBe(1);
      await sleep(50);
      expect(await s.getPin(pinKey())).toBeNull();
      await sleep(50);
      expect(f.pinWrites(p + timedOut)).toBe(2);
    });

    test('a retry that fails again is dropped (retried once, not forever); a write owed to a cleared channel is dropped', async () => {
      const client = await connect();
      const f = faulty(client);
      const p = prefix();
      const s = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 100, backoffMs: 0 });
      const k = pinKey();
      const cleared = pinKey();
      f.always((args) => (isPinWrite(args) ? { kind: 'hang' } : { kind: 'pass' }));
      await expect(s.setPin(k, '1', 60_000)).rejects.toMatchObject({ reason: 'timeout' });
      expect(await s.getPin(pinKey())).toBeNull(); // an answer: the owed write is retried now, and hangs again
      await waitFor(() => f.pinWrites(p + k) === 2, 1000);
      await waitFor(() => s.pendingPinWrites === 0, 1000);
      await sleep(150);
      f.always(() => ({ kind: 'pass' }));
      for (let i = 0; i < 3; i++) {
        expect(await s.getPin(pinKey())).toBeNull();
        await sleep(20);
      }
      expect(f.pinWrites(p + k)).toBe(2);
      expect(await raw(p + k)).toBeNull();

      f.always((args) => (isPinWrite(args) ? { kind: 'hang' } : { kind: 'pass' }));
      await expect(s.setPin(cleared, '5', 60_000)).rejects.toMatchObject({ reason: 'timeout' });
      expect(s.pendingPinWrites).toBe(1);
      f.always(() => ({ kind: 'pass' }));
      expect(await s.clearPin(cleared, '5')).toBe(false); // the pin was stale: nothing there, and nothing owed any more
      expect(s.pendingPinWrites).toBe(0);
      await sleep(50);
      expect(await raw(p + cleared)).toBeNull();
    });

    test('owed writes are bounded: at most 10,000 keys, the oldest dropped first', async () => {
      const client = await connect();
      const f = faulty(client);
      const p = prefix();
      const s = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 100, backoffMs: 300 });
      f.next({ kind: 'reject', error: new Error('Socket closed unexpectedly') }, { kind: 'reject', error: new Error('Socket closed unexpectedly') });
      const first = pinKey();
      await expect(s.setPin(first, '1', 60_000)).rejects.toThrow('Socket closed');
      await expect(s.setPin(pinKey(), '1', 60_000)).rejects.toThrow(); // the 2nd failure in a row (0.1: skipped)
      const keys = Array.from({ length: 10_000 }, () => pinKey());
      await Promise.all(keys.map((k, i) => s.setPin(k, String(2 + (i % 5)), 60_000).catch(() => undefined)));
      await sleep(320);
      expect(await s.getPin(pinKey())).toBeNull();
      await waitFor(async () => s.pendingPinWrites === 0 && (await raw(p + keys[keys.length - 1])) !== null, 10_000, 50);
      await waitFor(async () => (await raw(p + keys[0])) !== null, 5000, 50);
      expect(await raw(p + first)).toBeNull(); // the oldest owed write was dropped
      expect(await s.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 10_000 });
      expect(s.pendingPinWrites).toBe(0);
    }, 30_000);
  });

  describe('write-time ordering', () => {
    test('a write delivered late (after a newer one, from another instance) never replaces the newer pin', async () => {
      const client = await connect();
      const f = faulty(client);
      const p = prefix();
      const a = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 1000 });
      const b = new RedisStore({ client: await connect(), prefix: p, timeoutMs: 1000 });
      const k = pinKey();
      f.next({ kind: 'slowSend', ms: 300 });
      const late = a.setPin(k, '1', 60_000); // called first, reaches Redis last
      await sleep(50);
      await b.setPin(k, '2', 60_000);
      expect(await b.getPin(k)).toBe('2');
      await late;
      expect(await a.getPin(k)).toBe('2');
      expect(await b.getPin(k)).toBe('2');

      // the same store: the later call wins whatever order the writes land in
      const k2 = pinKey();
      f.next({ kind: 'slowSend', ms: 200 });
      const older = a.setPin(k2, '3', 60_000);
      await sleep(20);
      await a.setPin(k2, '4', 60_000);
      await older;
      expect(await a.getPin(k2)).toBe('4');
    });

    test('a write that timed out and was applied by Redis later, then retried, never moves a pin backwards', async () => {
      const client = await connect();
      const f = faulty(client);
      const p = prefix();
      const a = new RedisStore({ sendCommand: f.send, prefix: p, timeoutMs: 100, backoffMs: 0 });
      const b = new RedisStore({ client: await connect(), prefix: p, timeoutMs: 1000 });
      const k = pinKey();
      f.next({ kind: 'slowSend', ms: 400 });
      await expect(a.setPin(k, '1', 60_000)).rejects.toMatchObject({ reason: 'timeout' });
      await b.setPin(k, '2', 60_000); // the session moved meanwhile (another instance)
      expect(await a.getPin(k)).toBe('2'); // an answer: a's owed write is retried now (and refused)
      await sleep(400); // the original write reaches Redis now (and is refused)
      expect(await b.getPin(k)).toBe('2');
      expect(await a.getPin(k)).toBe('2');
      expect(f.pinWrites(p + k)).toBe(2);
      expect(a.pendingPinWrites).toBe(0);
    });
  });

  describe('pins written by 0.1 (bare channel ids)', () => {
    test('still read (with and without the sliding TTL), clear by compare-and-delete, and give way to a new write', async () => {
      const client = await connect();
      const p = prefix();
      const s = new RedisStore({ client, prefix: p });
      const k = pinKey();
      await admin.sendCommand(['SET', p + k, '7', 'PX', '5000']);
      expect(await s.getPin(k)).toBe('7');
      expect(await s.getPin(k, 60_000)).toBe('7');
      expect(Number(await admin.sendCommand(['PTTL', p + k]))).toBeGreaterThan(50_000);
      expect(await s.clearPin(k, '17')).toBe(false); // 7 is not 17 (prefix of the id is not the id)
      expect(await s.clearPin(k, '70')).toBe(false);
      expect(await s.clearPin(k, '7')).toBe(true);
      expect(await raw(p + k)).toBeNull();

      await admin.sendCommand(['SET', p + k, '7', 'PX', '5000']);
      await s.setPin(k, '8', 60_000); // a 0.1 pin has no write time: any new write replaces it
      expect(await s.getPin(k)).toBe('8');
      expect(await raw(p + k)).toMatch(/^8:\d+$/);
      expect(await s.clearPin(k, '7')).toBe(false);
      expect(await s.clearPin(k, '8')).toBe(true);
      expect(await s.countPins(ruleNameOfPinKey)).toEqual({});
    });
  });
});
