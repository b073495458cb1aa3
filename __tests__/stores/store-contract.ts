// The Store contract every store must pass (express-rate-limit's stores-test style): pins, TTLs,
// compare-and-delete, failure windows and cooldowns, overrides, health snapshots, events, admin.
// Not a test file by itself: memory-store.test.ts, redis-store.test.ts and redis-cluster.test.ts run it.
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, test } from '@jest/globals';
import { pinKeyPrefix, ruleNameOfPinKey } from '../../lib/affinity/layout';
import { RedisStore, type RedisStoreOptions } from '../../lib/stores/redis';
import type { Store, StoreEvent } from '../../lib/stores/store';
import { ChannelStatus } from '../../lib/types';

export interface StoreHarness {
  /** A store over empty state. */
  store: Store;
  /** Another instance over the same shared state (the same object for an in-process store). */
  peer: Store;
  /** Removes what the test wrote and releases anything the factory started. */
  cleanup?(): Promise<void> | void;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

async function eventually(check: () => boolean, ms = 2000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`condition not met within ${ms} ms`);
    await sleep(10);
  }
}

let pairSeq = 0;

/**
 * A harness of two RedisStores (two instances) over a fresh prefix under `base`, built by `make`;
 * `clear` removes what the test wrote under the prefix.
 */
export function redisStorePair(
  base: string,
  make: (prefix: string, side: 'a' | 'b') => RedisStoreOptions,
  clear: (prefix: string, store: RedisStore) => Promise<unknown>,
): () => Promise<StoreHarness> {
  return async () => {
    const prefix = `${base}${++pairSeq}:`;
    const store = new RedisStore(make(prefix, 'a'));
    const peer = new RedisStore(make(prefix, 'b'));
    return {
      store,
      peer,
      cleanup: async () => {
        store.shutdown();
        peer.shutdown();
        await clear(prefix, store);
      },
    };
  };
}

/** A pin key as the distributor builds it: `aff:<rule part>:<base64url sha256>`. */
export function pinKey(rule: string | null = 'codex cli trace'): string {
  const prefix = pinKeyPrefix(rule === null ? { name: '_', includeRuleName: false } : { name: rule, includeRuleName: true });
  return `${prefix}${randomBytes(32).toString('base64url')}`;
}

const policy = (failures: number, windowMs = 1000, durationMs = 30_000) => ({ failures, windowMs, durationMs });

export interface ContractOptions {
  /** Does the store push events (`subscribe`)? Default true; false skips the subscribe tests. */
  events?: boolean;
}

export function runStoreContract(name: string, factory: () => Promise<StoreHarness>, options: ContractOptions = {}): void {
  describe(`Store contract: ${name}`, () => {
    let h: StoreHarness;
    let store: Store;
    let peer: Store;
    beforeEach(async () => {
      h = await factory();
      store = h.store;
      peer = h.peer;
    });
    afterEach(async () => {
      await h.cleanup?.();
    });

    test('declares prefix and localKeys', () => {
      expect(typeof store.prefix).toBe('string');
      expect(typeof store.localKeys).toBe('boolean');
    });

    describe('pins', () => {
      test('an absent pin is null', async () => {
        expect(await store.getPin(pinKey())).toBeNull();
        expect(await store.getPin(pinKey(), 1000)).toBeNull();
      });

      test('setPin then getPin, seen by another instance', async () => {
        const k = pinKey();
        await store.setPin(k, '7', 10_000);
        expect(await store.getPin(k)).toBe('7');
        expect(await peer.getPin(k)).toBe('7');
        expect(await peer.getPin(k, 10_000)).toBe('7');
      });

      test('values are opaque strings: any value round-trips as written', async () => {
        const values = ['v-1.2', '0', '007', '-3', 'x', 'a b', '\u00e9t\u00e9', '1e3', '42'];
        const keys = values.map(() => pinKey());
        for (let i = 0; i < values.length; i++) await store.setPin(keys[i], values[i], 10_000);
        for (let i = 0; i < values.length; i++) {
          expect(await store.getPin(keys[i])).toBe(values[i]);
          expect(await peer.getPin(keys[i], 10_000)).toBe(values[i]);
        }
        const long = pinKey();
        const value = 'v'.repeat(64);
        await store.setPin(long, value, 10_000);
        expect(await peer.getPin(long)).toBe(value);
      });

      test('keys are independent; setPin overwrites', async () => {
        const a = pinKey();
        const b = pinKey(null);
        await store.setPin(a, '1', 10_000);
        await store.setPin(b, '2', 10_000);
        await peer.setPin(a, '3', 10_000);
        expect(await store.getPin(a)).toBe('3');
        expect(await store.getPin(b)).toBe('2');
        await peer.setPin(b, 'v-1.2', 10_000);
        expect(await store.getPin(b)).toBe('v-1.2');
        expect(await store.getPin(a)).toBe('3');
      });

      test('a pin expires after its TTL', async () => {
        const k = pinKey();
        await store.setPin(k, '4', 200);
        expect(await store.getPin(k)).toBe('4');
        await sleep(450);
        expect(await store.getPin(k)).toBeNull();
        expect(await peer.getPin(k)).toBeNull();
      });

      test('getPin with refreshTtlMs slides the TTL; without it does not', async () => {
        const sliding = pinKey();
        const fixed = pinKey();
        await store.setPin(sliding, '5', 600);
        await store.setPin(fixed, '6', 600);
        await sleep(350);
        expect(await peer.getPin(sliding, 600)).toBe('5'); // now expires ~950 ms after the start
        expect(await peer.getPin(fixed)).toBe('6'); // still expires at ~600 ms
        await sleep(400); // ~750 ms after the start
        expect(await store.getPin(sliding)).toBe('5');
        expect(await store.getPin(fixed)).toBeNull();
        await sleep(550); // ~1300 ms: the refreshed TTL has run out too
        expect(await store.getPin(sliding)).toBeNull();
      });

      test('clearPin is a compare-and-delete', async () => {
        const k = pinKey();
        expect(await store.clearPin(k, '1')).toBe(false);
        await store.setPin(k, '1', 10_000);
        expect(await store.clearPin(k, '2')).toBe(false);
        expect(await store.getPin(k)).toBe('1');
        expect(await peer.clearPin(k, '1')).toBe(true);
        expect(await store.getPin(k)).toBeNull();
        expect(await store.clearPin(k, '1')).toBe(false);
      });

      test('clearPin compares the whole opaque value', async () => {
        const k = pinKey();
        await store.setPin(k, 'v-1.2', 10_000);
        // a different value, a prefix, an extension, a numeric look-alike: none deletes
        for (const other of ['v-1.3', 'v-1', 'v-1.2x', 'v-1.2:', '1.2', 'V-1.2', '']) {
          expect(await store.clearPin(k, other)).toBe(false);
          expect(await peer.getPin(k)).toBe('v-1.2');
        }
        const n = pinKey();
        await store.setPin(n, '12', 10_000);
        for (const other of ['1', '012', '12.0', '120', ' 12']) {
          expect(await peer.clearPin(n, other)).toBe(false);
          expect(await store.getPin(n)).toBe('12');
        }
        expect(await peer.clearPin(k, 'v-1.2')).toBe(true);
        expect(await store.getPin(k)).toBeNull();
        expect(await store.clearPin(n, '12')).toBe(true);
        expect(await peer.getPin(n)).toBeNull();
      });

      test('a late stale clear never erases a re-pin made by another instance', async () => {
        const k = pinKey();
        await store.setPin(k, '1', 10_000);
        const seen = await store.getPin(k, 10_000); // this instance finds channel 1 stale...
        expect(seen).toBe('1');
        await peer.setPin(k, '2', 10_000); // ...meanwhile another instance re-pins the key
        expect(await store.clearPin(k, seen as string)).toBe(false); // the late clear is a no-op
        expect(await store.getPin(k)).toBe('2');
        expect(await peer.getPin(k)).toBe('2');
      });

      test('concurrent clears of the same stale pin: exactly one deletes', async () => {
        const k = pinKey();
        await store.setPin(k, '9', 10_000);
        const results = await Promise.all([store.clearPin(k, '9'), peer.clearPin(k, '9'), store.clearPin(k, '9')]);
        expect(results.filter(Boolean)).toHaveLength(1);
      });
    });

    describe('recordFailure', () => {
      test('starts a cooldown when the threshold is reached within the window', async () => {
        const now = Date.now();
        expect(await store.recordFailure(11, policy(3), now)).toBeNull();
        expect(await peer.recordFailure(11, policy(3), now + 100)).toBeNull();
        const until = await store.recordFailure(11, policy(3), now + 200);
        expect(until).toBe(now + 200 + 30_000);
        expect((await store.loadHealth()).cooldowns).toEqual({ 11: until });
        expect((await peer.loadHealth()).cooldowns).toEqual({ 11: until });
      });

      test('failures outside the window start a new count', async () => {
        const now = Date.now();
        expect(await store.recordFailure(12, policy(2, 1000), now)).toBeNull();
        expect(await store.recordFailure(12, policy(2, 1000), now + 1001)).toBeNull(); // window restarted here
        expect(await store.recordFailure(12, policy(2, 1000), now + 1500)).toBe(now + 1500 + 30_000);
      });

      test('a failure exactly at the window edge still counts', async () => {
        const now = Date.now();
        expect(await store.recordFailure(13, policy(2, 1000), now)).toBeNull();
        expect(await store.recordFailure(13, policy(2, 1000), now + 1000)).toBe(now + 1000 + 30_000);
      });

      test('the count restarts after a cooldown starts', async () => {
        const now = Date.now();
        expect(await store.recordFailure(14, policy(2), now)).toBeNull();
        expect(await store.recordFailure(14, policy(2), now + 1)).not.toBeNull();
        expect(await store.recordFailure(14, policy(2), now + 2)).toBeNull();
        expect(await store.recordFailure(14, policy(2), now + 3)).toBe(now + 3 + 30_000);
      });

      test('failures: 1 cools down at once; channels are counted separately', async () => {
        const now = Date.now();
        expect(await store.recordFailure(15, policy(1, 1000, 5000), now)).toBe(now + 5000);
        expect(await store.recordFailure(16, policy(2), now)).toBeNull();
        expect(await store.recordFailure(17, policy(2), now)).toBeNull();
        expect((await store.loadHealth()).cooldowns).toEqual({ 15: now + 5000 });
      });

      test('an expired cooldown is not in loadHealth', async () => {
        const now = Date.now();
        await store.recordFailure(18, policy(1, 1000, 1000), now - 5000);
        await store.recordFailure(19, policy(1, 1000, 300), now);
        expect(Object.keys((await store.loadHealth()).cooldowns)).toEqual(['19']);
        await sleep(400);
        expect((await peer.loadHealth()).cooldowns).toEqual({});
      });

      test('clearCooldown ends the cooldown and the failure count', async () => {
        if (!store.clearCooldown) return;
        const now = Date.now();
        await store.recordFailure(20, policy(1), now);
        await store.recordFailure(21, policy(2), now);
        await peer.clearCooldown?.(20);
        await peer.clearCooldown?.(21);
        expect((await store.loadHealth()).cooldowns).toEqual({});
        expect(await store.recordFailure(21, policy(2), now + 1)).toBeNull();
      });
    });

    describe('overrides and loadHealth', () => {
      test('an empty store has an empty snapshot', async () => {
        expect(await store.loadHealth()).toEqual({ cooldowns: {}, statuses: {}, disabledKeys: {}, marks: [] });
      });

      test('a status override is shared and removed with null', async () => {
        await store.setOverride(31, { status: ChannelStatus.AutoDisabled });
        await store.setOverride(32, { status: ChannelStatus.ManuallyDisabled });
        expect((await peer.loadHealth()).statuses).toEqual({ 31: 3, 32: 2 });
        await peer.setOverride(31, { status: null });
        expect((await store.loadHealth()).statuses).toEqual({ 32: 2 });
      });

      test('disabled keys are shared and removed with []', async () => {
        await store.setOverride(33, { disabledKeys: [0, 2] });
        expect((await peer.loadHealth()).disabledKeys).toEqual({ 33: [0, 2] });
        await peer.setOverride(33, { disabledKeys: [2] });
        expect((await store.loadHealth()).disabledKeys).toEqual({ 33: [2] });
        await store.setOverride(33, { disabledKeys: [] });
        expect((await store.loadHealth()).disabledKeys).toEqual({});
      });

      test('status and keys are independent; an empty patch changes nothing', async () => {
        await store.setOverride(34, { status: ChannelStatus.AutoDisabled, disabledKeys: [1] });
        await store.setOverride(34, { disabledKeys: [] });
        await store.setOverride(34, {});
        const snap = await peer.loadHealth();
        expect(snap.statuses).toEqual({ 34: 3 });
        expect(snap.disabledKeys).toEqual({});
        await store.setOverride(34, { status: null, disabledKeys: [3, 4] });
        expect(await store.loadHealth()).toEqual({ cooldowns: {}, statuses: {}, disabledKeys: { 34: [3, 4] }, marks: [] });
      });

      test('a snapshot holds cooldowns, statuses and keys together', async () => {
        const until = await store.recordFailure(35, policy(1), Date.now());
        await store.setOverride(36, { status: ChannelStatus.AutoDisabled });
        await store.setOverride(37, { disabledKeys: [5] });
        expect(await peer.loadHealth()).toEqual({ cooldowns: { 35: until }, statuses: { 36: 3 }, disabledKeys: { 37: [5] }, marks: [] });
      });
    });

    if (options.events === false) {
      // A store built without a subscriber has no push channel: the distributor polls instead.
      test('has no subscribe(): changes reach other instances by polling loadHealth()', async () => {
        expect(store.subscribe).toBeUndefined();
        await store.setOverride(46, { status: ChannelStatus.AutoDisabled });
        expect((await peer.loadHealth()).statuses[46]).toBe(ChannelStatus.AutoDisabled);
        await store.setOverride(46, { status: null });
      });
    } else describe('subscribe', () => {
      test('pushes every change to the other instances, until unsubscribed', async () => {
        expect(typeof peer.subscribe).toBe('function');
        if (!peer.subscribe) return;
        const events: StoreEvent[] = [];
        const off = peer.subscribe((e) => events.push(e));
        await sleep(100); // a remote subscription takes a round trip to start
        const until = await store.recordFailure(41, policy(1), Date.now());
        await store.setOverride(42, { status: ChannelStatus.AutoDisabled });
        await store.setOverride(42, { status: null });
        await store.setOverride(43, { disabledKeys: [1, 2] });
        await store.clearCooldown?.(41);
        const expected: StoreEvent[] = [
          { type: 'cooldown', channelId: 41, until: until as number },
          { type: 'status', channelId: 42, status: ChannelStatus.AutoDisabled },
          { type: 'status', channelId: 42, status: null },
          { type: 'keys', channelId: 43, disabledKeys: [1, 2] },
        ];
        if (store.clearCooldown) expected.push({ type: 'cooldown', channelId: 41, until: 0 });
        await eventually(() => events.length >= expected.length);
        expect(events).toEqual(expected);
        off();
        await sleep(50);
        await store.setOverride(44, { status: ChannelStatus.AutoDisabled });
        await store.recordFailure(45, policy(1), Date.now());
        await sleep(200);
        expect(events).toHaveLength(expected.length);
      });

      test('a failure below the threshold publishes nothing; listeners are independent', async () => {
        expect(typeof store.subscribe).toBe('function');
        if (!peer.subscribe || !store.subscribe) return;
        const a: StoreEvent[] = [];
        const b: StoreEvent[] = [];
        const offA = peer.subscribe((e) => a.push(e));
        const offB = store.subscribe((e) => b.push(e));
        await sleep(100);
        await store.recordFailure(46, policy(2), Date.now());
        await store.setOverride(47, { disabledKeys: [0] });
        await eventually(() => a.length >= 1 && b.length >= 1);
        offA();
        await store.setOverride(47, { disabledKeys: [] });
        await eventually(() => b.length >= 2);
        await sleep(100);
        expect(a).toEqual([{ type: 'keys', channelId: 47, disabledKeys: [0] }]);
        expect(b).toEqual([{ type: 'keys', channelId: 47, disabledKeys: [0] }, { type: 'keys', channelId: 47, disabledKeys: [] }]);
        offB();
      });
    });

    describe('clearPins and countPins', () => {
      test('count per rule name, clear one rule or all, leave health alone', async () => {
        if (!store.clearPins || !store.countPins) return;
        await store.setPin(pinKey('codex cli trace'), '1', 10_000);
        await store.setPin(pinKey('codex cli trace'), '2', 10_000);
        await store.setPin(pinKey('rule:with*odd?chars[x]'), '2', 10_000);
        await store.setPin(pinKey(null), '3', 10_000);
        await store.setOverride(51, { status: ChannelStatus.AutoDisabled });
        expect(await peer.countPins?.(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 2, 'rule:with*odd?chars[x]': 1, _: 1 });
        expect(await store.clearPins(pinKeyPrefix({ name: 'rule:with*odd?chars[x]', includeRuleName: true }))).toBe(1);
        expect(await store.clearPins(pinKeyPrefix({ name: 'codex cli', includeRuleName: true }))).toBe(0); // a prefix of a name is not the rule
        expect(await store.clearPins(pinKeyPrefix({ name: 'codex cli trace', includeRuleName: true }))).toBe(2);
        expect(await store.countPins(ruleNameOfPinKey)).toEqual({ _: 1 });
        expect(await store.clearPins()).toBe(1);
        expect(await store.countPins(ruleNameOfPinKey)).toEqual({});
        expect((await store.loadHealth()).statuses).toEqual({ 51: 3 });
      });

      test('clearPins(prefix) deletes exactly the keys that start with the prefix', async () => {
        if (!store.clearPins || !store.countPins) return;
        const keys = ['p:a:1', 'p:a:2', 'p:ab:1', 'p:a', 'q:a:1', 'x-p:a:1'];
        for (const k of keys) await store.setPin(k, 'v', 10_000);
        expect(await peer.clearPins?.('p:a:')).toBe(2);
        for (const k of keys) expect(await store.getPin(k)).toBe(k.startsWith('p:a:') ? null : 'v');
        expect(await store.clearPins('p:')).toBe(2); // p:ab:1 and p:a
        expect(await store.getPin('q:a:1')).toBe('v');
        expect(await store.getPin('x-p:a:1')).toBe('v');
        expect(await store.clearPins()).toBe(2);
        expect(await store.countPins((k) => k)).toEqual({});
      });

      test('clearPins never deletes health (cooldowns, failure counts, overrides)', async () => {
        if (!store.clearPins) return;
        const now = Date.now();
        const until = await store.recordFailure(52, policy(1), now);
        expect(until).toBe(now + 30_000);
        expect(await store.recordFailure(53, policy(3), now)).toBeNull(); // a failure count, no cooldown yet
        await store.setOverride(54, { status: ChannelStatus.ManuallyDisabled });
        await store.setOverride(55, { disabledKeys: [1, 3] });
        const mark = { kind: 'eject' as const, channelId: 56, until: now + 60_000, count: 2 };
        await store.setMark?.(mark);
        await store.setPin(pinKey(), '1', 10_000);
        await store.setPin('other:key', 'v', 10_000);
        const health = { cooldowns: { 52: until }, statuses: { 54: 2 }, disabledKeys: { 55: [1, 3] }, marks: [mark] };
        expect(await store.loadHealth()).toEqual(health);
        expect(await store.clearPins()).toBe(2);
        expect(await store.clearPins('')).toBe(0);
        expect(await peer.clearPins?.('{')).toBe(0);
        expect(await store.clearPins('{health}')).toBe(0);
        expect(await store.loadHealth()).toEqual(health);
        expect(await peer.loadHealth()).toEqual(health);
        // the failure count of channel 53 survived too: two more failures reach its threshold of 3
        expect(await store.recordFailure(53, policy(3), now + 1)).toBeNull();
        expect(await store.recordFailure(53, policy(3), now + 2)).toBe(now + 2 + 30_000);
      });

      test('countPins groups by the function given, over every live pin', async () => {
        if (!store.countPins) return;
        expect(await store.countPins((k) => k)).toEqual({});
        await store.setPin('g1:a', '1', 10_000);
        await store.setPin('g1:b', 'v-1.2', 10_000);
        await store.setPin('g2:a', '1', 10_000);
        await store.setPin(pinKey('codex cli trace'), '7', 10_000);
        await store.setPin('g3:gone', '1', 100);
        await store.setOverride(56, { status: ChannelStatus.AutoDisabled });
        await store.recordFailure(57, policy(1), Date.now());
        await sleep(250); // g3:gone has expired
        const seen: string[] = [];
        const byFirst = await peer.countPins?.((k) => {
          seen.push(k);
          return k.slice(0, k.indexOf(':'));
        });
        expect(byFirst).toEqual({ g1: 2, g2: 1, aff: 1 });
        // groupOf gets the key as it was written (without the store prefix), never a health key
        expect(seen.filter((k) => !k.startsWith('aff:')).sort()).toEqual(['g1:a', 'g1:b', 'g2:a']);
        expect(await store.countPins(() => 'all')).toEqual({ all: 4 });
        expect(await store.countPins((k) => k)).toEqual(Object.fromEntries(seen.map((k) => [k, 1])));
        expect(await store.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 1, g1: 2, g2: 1 });
      });
    });
  });
}
