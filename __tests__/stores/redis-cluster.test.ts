// RedisStore on a real 3-master Redis Cluster (our own redis-servers on loopback), through
// node-redis createCluster + sendCommandCluster: the Store contract, plus proof that pins spread
// over several masters while the health keys share one slot.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { createCluster } from 'redis';
import { ruleNameOfPinKey } from '../../lib/affinity/layout';
import { RedisStore, type RedisStoreOptions } from '../../lib/stores/redis';
import { hasRedisServer, startCluster, type OwnCluster } from '../helpers/redis';
import { pinKey, redisStorePair, runStoreContract } from './store-contract';

type Cluster = ReturnType<typeof createCluster>;
const BASE = 'ecd-test-cluster:';

/** The one-liners docs/stores.md gives for a node-redis cluster. */
function clusterOptions(cluster: Cluster, prefix: string): RedisStoreOptions {
  return {
    sendCommandCluster: ({ key, isReadOnly, command }) => cluster.sendCommand(key, isReadOnly, command),
    masters: () => Promise.all(cluster.masters.map((m) => cluster.nodeClient(m))),
    subscriber: cluster,
    prefix,
    timeoutMs: 1000,
  };
}

const available = hasRedisServer();
if (!available) {
  if (process.env.CI === 'true') throw new Error('redis-server is required for the cluster tests under CI=true');
  // eslint-disable-next-line no-console
  console.warn('\n!!! SKIPPED "RedisStore on a Redis Cluster": redis-server is not installed\n');
}

(available ? describe : describe.skip)('RedisStore on a Redis Cluster', () => {
  let own: OwnCluster | undefined;
  let a: Cluster;
  let b: Cluster;

  beforeAll(async () => {
    own = await startCluster(3);
    const make = () => createCluster({ rootNodes: [{ url: own?.urls[0] }] }).on('error', () => undefined);
    a = make();
    b = make();
    await Promise.all([a.connect(), b.connect()]);
  }, 30_000);

  afterAll(async () => {
    await Promise.all([a, b].map((c) => c?.close().catch(() => undefined)));
    await own?.stop();
  }, 15_000);

  runStoreContract('RedisStore (node-redis cluster, sendCommandCluster)', redisStorePair(BASE, (prefix, side) => clusterOptions(side === 'a' ? a : b, prefix), (_prefix, store) => store.clearPins()));

  describe('slots', () => {
    test('pins spread over the masters; the health keys share one slot', async () => {
      expect(a.masters).toHaveLength(3);
      const prefix = `${BASE}spread:`;
      const store = new RedisStore(clusterOptions(a, prefix));
      await Promise.all(Array.from({ length: 60 }, (_, i) => store.setPin(pinKey(), String(i + 1), 10_000)));
      await store.recordFailure(1, { failures: 1, windowMs: 1000, durationMs: 60_000 }, Date.now());
      await store.setOverride(2, { status: 3, disabledKeys: [1] });
      const nodes = await Promise.all(a.masters.map((m) => a.nodeClient(m)));
      const perNode = await Promise.all(nodes.map(async (n) => ((await n.sendCommand(['KEYS', `${prefix}aff:*`])) as string[]).length));
      expect(perNode.reduce((x, y) => x + y, 0)).toBe(60);
      expect(perNode.filter((n) => n > 0).length).toBeGreaterThanOrEqual(2);
      const slots = await Promise.all(['fail', 'cool', 'status', 'keys'].map((h) => nodes[0].sendCommand(['CLUSTER', 'KEYSLOT', `${prefix}{health}:${h}`])));
      expect(new Set(slots).size).toBe(1);
      expect(await store.countPins(ruleNameOfPinKey)).toEqual({ 'codex cli trace': 60 });
      expect(await store.clearPins()).toBe(60);
      expect((await store.loadHealth()).statuses).toEqual({ 2: 3 });
    });

    test('a pin written through one cluster client is read and cleared through another', async () => {
      const prefix = `${BASE}cross:`;
      const s1 = new RedisStore(clusterOptions(a, prefix));
      const s2 = new RedisStore(clusterOptions(b, prefix));
      const keys = Array.from({ length: 10 }, () => pinKey());
      await Promise.all(keys.map((k, i) => s1.setPin(k, String(i + 1), 10_000)));
      expect(await Promise.all(keys.map((k) => s2.getPin(k, 10_000)))).toEqual(keys.map((_, i) => String(i + 1)));
      expect(await Promise.all(keys.map((k, i) => s2.clearPin(k, String(i + 1))))).toEqual(keys.map(() => true));
      expect(await s1.countPins(ruleNameOfPinKey)).toEqual({});
    });
  });
});
