// The Store contract against the embedded MemoryStore (the reference semantics).
import { describe, expect, jest, test } from '@jest/globals';
import { MemoryStore } from '../../lib/stores/memory';
import { runStoreContract } from './store-contract';

runStoreContract('MemoryStore', async () => {
  const store = new MemoryStore({ prefix: 'ecd-test-memory:' });
  return { store, peer: store, cleanup: () => store.shutdown() };
});

describe('MemoryStore: the sliding TTL moves in steps (one expiry write per step, not per read)', () => {
  test('a read refreshes the TTL once a step (1 s, or a tenth of a shorter TTL) has passed, not before', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const store = new MemoryStore();
    try {
      const t0 = Date.now();
      await store.setPin('aff:_:step', '7', 10_000);
      jest.setSystemTime(t0 + 900); // under the 1 s step: no refresh
      expect(await store.getPin('aff:_:step', 10_000)).toBe('7');
      jest.setSystemTime(t0 + 9_950); // still the first TTL
      expect(await store.getPin('aff:_:step', 10_000)).toBe('7'); // refreshed now: expires at 19.95 s
      jest.setSystemTime(t0 + 10_500); // past the first TTL, kept by the refresh at 9.95 s
      expect(await store.getPin('aff:_:step', 10_000)).toBe('7'); // 550 ms after it: no new refresh
      jest.setSystemTime(t0 + 19_900); // so the expiry is still 19.95 s
      expect(await store.getPin('aff:_:step')).toBe('7');
      jest.setSystemTime(t0 + 19_960);
      expect(await store.getPin('aff:_:step')).toBeNull();

      // a short TTL steps by a tenth of it: 500 ms TTL, refreshed by a read 60 ms later
      const t1 = Date.now();
      await store.setPin('aff:_:short', '8', 500);
      jest.setSystemTime(t1 + 60);
      expect(await store.getPin('aff:_:short', 500)).toBe('8');
      jest.setSystemTime(t1 + 540);
      expect(await store.getPin('aff:_:short')).toBe('8');
    } finally {
      store.shutdown();
      jest.useRealTimers();
    }
  });
});

describe('MemoryStore.getPinSync: getPin without the promise', () => {
  test('answers what getPin answers, sliding the TTL the same way', async () => {
    jest.useFakeTimers({ doNotFake: ['nextTick', 'queueMicrotask', 'setImmediate', 'clearImmediate', 'setInterval', 'clearInterval', 'setTimeout', 'clearTimeout'] });
    const store = new MemoryStore();
    try {
      const t0 = Date.now();
      expect(store.getPinSync('aff:_:absent')).toBeNull();
      expect(store.getPinSync('aff:_:absent', 1000)).toBeNull();
      await store.setPin('aff:_:sync', 'v-1.2', 1000);
      expect(store.getPinSync('aff:_:sync')).toBe('v-1.2');
      jest.setSystemTime(t0 + 900);
      expect(store.getPinSync('aff:_:sync', 1000)).toBe('v-1.2'); // refreshed: expires at 1.9 s
      jest.setSystemTime(t0 + 1500);
      expect(store.getPinSync('aff:_:sync')).toBe('v-1.2');
      expect(await store.getPin('aff:_:sync')).toBe('v-1.2');
      jest.setSystemTime(t0 + 1950);
      expect(store.getPinSync('aff:_:sync')).toBeNull();
      expect(await store.getPin('aff:_:sync')).toBeNull();
    } finally {
      store.shutdown();
      jest.useRealTimers();
    }
  });

  test('a subclass that overrides getPin gets undefined (the distributor then calls its getPin)', async () => {
    const reads: string[] = [];
    class Wrapped extends MemoryStore {
      override async getPin(key: string, refreshTtlMs?: number): Promise<string | null> {
        reads.push(key);
        return super.getPin(key, refreshTtlMs);
      }
    }
    const store = new Wrapped();
    try {
      await store.setPin('aff:_:w', '3', 10_000);
      expect(store.getPinSync('aff:_:w')).toBeUndefined();
      expect(store.getPinSync('aff:_:absent', 1000)).toBeUndefined();
      expect(reads).toEqual([]);
      expect(await store.getPin('aff:_:w')).toBe('3');
      expect(reads).toEqual(['aff:_:w']);
    } finally {
      store.shutdown();
    }
  });
});
