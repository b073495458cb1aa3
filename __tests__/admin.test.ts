// Admin helpers (clear / count pins, channel health) and the guarded admin router.
import { afterAll, describe, expect, test } from '@jest/globals';
import express, { type NextFunction, type Request, type Response } from 'express';
import request from 'supertest';
import { ChannelStatus, MemoryStore, distributor, type DistributorHandler, type Store } from '../lib';
import { adminRouter, distributorAdmin } from '../lib/entry/admin';
import { createApp, memoryLogger } from './helpers/create-app';

const rules = [
  { name: 'r one/é', modelRegex: ['^gpt-'], pathRegex: ['/one'], keySources: [{ type: 'header' as const, key: 'x-session' }], includeRuleName: true },
  { name: 'anon', modelRegex: ['^gpt-'], pathRegex: ['/anon'], keySources: [{ type: 'header' as const, key: 'x-session' }] },
];
const tick = () => new Promise((r) => setTimeout(r, 5));
const shutdowns: Array<() => Promise<void> | void> = [];
afterAll(async () => {
  for (const s of shutdowns) await s();
});

function setup() {
  const store = new MemoryStore();
  const { app, mw } = createApp({
    channels: [{ id: 1, models: 'gpt-4o', key: ['sk-a', 'sk-b', 'sk-c'], disabledKeys: [2] }, { id: 2, models: 'gpt-4o', priority: -1 }],
    store,
    affinity: { rules },
    health: { cooldown: { failures: 1, durationMs: 60_000 } },
  }, {
    handler: async (req, res) => {
      if (req.headers['x-upstream']) await res.locals.distribution?.retry({ status: Number(req.headers['x-upstream']) });
      res.json({ id: res.locals.channel?.id ?? null });
    },
  });
  shutdowns.push(() => mw.shutdown(), () => store.shutdown());
  const pin = async (path: string, session: string) => {
    await request(app).post(path).set('x-session', session).send({ model: 'gpt-4o' }).expect(200);
    await tick();
  };
  return { app, mw, store, pin };
}

describe('distributorAdmin', () => {
  test('countPins by rule name (`_` for rules without includeRuleName) and clearPins by rule', async () => {
    const { mw, pin } = setup();
    const admin = distributorAdmin(mw);
    await pin('/one', 'a');
    await pin('/one', 'b');
    await pin('/anon', 'a');
    expect(await admin.countPins()).toEqual({ 'r one/é': 2, _: 1 });
    expect(await admin.clearPins({ rule: 'r one/é' })).toBe(2);
    expect(await admin.countPins()).toEqual({ _: 1 });
    expect(await admin.clearPins({ rule: 'r one/é' })).toBe(0);
    expect(await admin.clearPins({ rule: '_' })).toBe(1);
    expect(await admin.countPins()).toEqual({});
  });

  test('clearPins({ all: true }) deletes every pin', async () => {
    const { mw, pin } = setup();
    const admin = distributorAdmin(mw);
    await pin('/one', 'a');
    await pin('/anon', 'b');
    expect(await admin.clearPins({ all: true })).toBe(2);
    expect(await admin.countPins()).toEqual({});
  });

  test('a rule without includeRuleName, or no target, is refused (never a silent clear-all)', async () => {
    const { mw, pin } = setup();
    const admin = distributorAdmin(mw);
    await pin('/one', 'a');
    await expect(admin.clearPins({ rule: 'anon' })).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_OPTIONS', message: expect.stringContaining('includeRuleName') });
    await expect(admin.clearPins({} as never)).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_OPTIONS' });
    await expect(admin.clearPins({ all: false } as never)).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_OPTIONS' });
    await expect(admin.clearPins({ rule: 'anon', all: true } as never)).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_OPTIONS' });
    expect(await admin.countPins()).toEqual({ 'r one/é': 1 });
  });

  test('what reaches the store: key prefixes aff:<rule part>: / aff:_: / aff:, and the rule name of a key to count by', async () => {
    const { mw, store, pin } = setup();
    const admin = distributorAdmin(mw);
    const cleared: Array<string | undefined> = [];
    const grouped: Array<(key: string) => string> = [];
    const clearPins = store.clearPins.bind(store);
    const countPins = store.countPins.bind(store);
    store.clearPins = (keyPrefix?: string) => {
      cleared.push(keyPrefix);
      return clearPins(keyPrefix);
    };
    store.countPins = (groupOf: (key: string) => string) => {
      grouped.push(groupOf);
      return countPins(groupOf);
    };
    await pin('/one', 'a');
    await pin('/anon', 'b');
    // pins another instance wrote for a rule this one does not have, and a key outside the pin namespace
    await store.setPin('aff:other%20rule:x', '1', 60_000);
    await store.setPin('aff:other%20rule:y', '2', 60_000);
    await store.setPin('not-a-pin:aff:z', '1', 60_000);
    expect(await admin.countPins()).toEqual({ 'r one/é': 1, _: 1, 'other rule': 2, 'not-a-pin': 1 });
    expect(grouped).toHaveLength(1);
    expect(grouped[0]('aff:r%20one%2F%C3%A9:abc')).toBe('r one/é');
    expect(grouped[0]('aff:_:abc')).toBe('_');
    expect(await admin.clearPins({ rule: 'other rule' })).toBe(2); // an unknown rule name still clears its pins
    expect(await admin.clearPins({ rule: 'r one/é' })).toBe(1);
    expect(await admin.clearPins({ rule: '_' })).toBe(1);
    expect(await admin.clearPins({ all: true })).toBe(0); // every pin, and nothing outside aff:
    expect(cleared).toEqual(['aff:other%20rule:', 'aff:r%20one%2F%C3%A9:', 'aff:_:', 'aff:']);
    expect(await store.getPin('not-a-pin:aff:z')).toBe('1');
    expect(await admin.countPins()).toEqual({ 'not-a-pin': 1 });
  });

  test('channelHealth: status, cooldown and disabled keys', async () => {
    const { app, mw } = setup();
    const admin = distributorAdmin(mw);
    expect(admin.channelHealth(1)).toEqual({ id: 1, status: ChannelStatus.Enabled, coolingDown: false, cooldownUntil: null, disabledKeys: [2], ejectedUntil: null, coolingKeys: {}, inFlight: 0, latency: {} });
    await request(app).post('/x').set('x-upstream', '500').send({ model: 'gpt-4o' }).expect(200);
    const h = admin.channelHealth(1);
    expect(h).toMatchObject({ coolingDown: true });
    expect(h?.cooldownUntil).toBeGreaterThan(Date.now() + 50_000);
    mw.registry.setStatus(2, ChannelStatus.ManuallyDisabled);
    expect(admin.channelHealth(2)).toMatchObject({ status: ChannelStatus.ManuallyDisabled, coolingDown: false });
    expect(admin.channelHealth(99)).toBeUndefined();
    expect(mw.health(1)).toEqual(h);
  });

  test('affinityReport(): per rule lookups, hits, hit rate and cached ratios on hits and misses', async () => {
    const store = new MemoryStore();
    const { app, mw } = createApp({ channels: [{ id: 1, models: 'gpt-4o' }], store, affinity: { rules } }, {
      handler: (req, res) => {
        const u = req.headers['x-usage'];
        if (typeof u === 'string') res.locals.distribution?.reportUsage(JSON.parse(u));
        res.json({ id: res.locals.channel?.id ?? null });
      },
    });
    shutdowns.push(() => mw.shutdown(), () => store.shutdown());
    const admin = distributorAdmin(mw);
    expect(admin.affinityReport()).toEqual({});
    const send = async (path: string, session: string | undefined, usage?: object) => {
      const r = request(app).post(path).send({ model: 'gpt-4o' });
      if (session) void r.set('x-session', session);
      if (usage) void r.set('x-usage', JSON.stringify(usage));
      await r.expect(200);
      await tick();
    };
    await send('/one', 'a', { inputTokens: 100, cachedTokens: 0 }); // miss
    await send('/one', 'a', { inputTokens: 100, cachedTokens: 80 }); // hit
    await send('/one', 'a', { inputTokens: 100, cachedTokens: 100 }); // hit
    await send('/one', 'a'); // hit, no usage report
    await send('/one', 'b', { inputTokens: 50, cachedTokens: 10 }); // miss
    await send('/anon', 'a'); // miss, no usage
    await send('/none', undefined, { inputTokens: 7 }); // no rule: in no line
    expect(admin.affinityReport()).toEqual({
      'r one/é': {
        lookups: 5,
        hits: 3,
        hitRate: 0.6,
        onHits: { reports: 2, inputTokens: 200, cachedTokens: 180, cachedRatio: 0.9 },
        onMisses: { reports: 2, inputTokens: 150, cachedTokens: 10, cachedRatio: 10 / 150 },
      },
      anon: { lookups: 1, hits: 0, hitRate: 0, onHits: { reports: 0, inputTokens: 0, cachedTokens: 0, cachedRatio: null }, onMisses: { reports: 0, inputTokens: 0, cachedTokens: 0, cachedRatio: null } },
    });
    // a snapshot: later traffic does not change a report already taken
    const before = admin.affinityReport();
    await send('/one', 'a', { inputTokens: 1, cachedTokens: 1 });
    expect(before['r one/é'].lookups).toBe(5);
    expect(admin.affinityReport()['r one/é'].lookups).toBe(6);
  });

  test('needs the handler returned by distributor()', () => {
    expect(() => distributorAdmin((() => undefined) as unknown as DistributorHandler)).toThrow(expect.objectContaining({ code: 'ERR_DIST_INVALID_OPTIONS' }));
  });

  test('a store without clearPins / countPins: ERR_DIST_INVALID_STORE', async () => {
    const inner = new MemoryStore();
    const bare: Store = {
      localKeys: true, prefix: 'x:',
      getPin: (k, t) => inner.getPin(k, t), setPin: (k, c, t) => inner.setPin(k, c, t), clearPin: (k, c) => inner.clearPin(k, c),
      recordFailure: (c, p, n) => inner.recordFailure(c, p, n), setOverride: (c, p) => inner.setOverride(c, p), loadHealth: () => inner.loadHealth(),
    };
    const mw = distributor({ channels: [{ id: 1, models: 'm' }], store: bare, logger: memoryLogger() });
    shutdowns.push(() => mw.shutdown(), () => inner.shutdown());
    const admin = distributorAdmin(mw);
    await expect(admin.countPins()).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_STORE' });
    await expect(admin.clearPins({ all: true })).rejects.toMatchObject({ code: 'ERR_DIST_INVALID_STORE' });
    const app = express();
    app.use(adminRouter(mw, { guard: (_req, _res, next) => next() }));
    const r = await request(app).get('/pins').expect(501);
    expect(r.body.error.code).toBe('ERR_DIST_INVALID_STORE');
  });
});

describe('adminRouter', () => {
  const guard = (req: Request, res: Response, next: NextFunction) => {
    if (req.headers['x-admin'] === 'yes') next();
    else res.status(401).json({ error: 'unauthorised' });
  };

  test('a guard is required', () => {
    const { mw } = setup();
    expect(() => adminRouter(mw, {} as never)).toThrow(expect.objectContaining({ code: 'ERR_DIST_INVALID_OPTIONS' }));
    expect(() => adminRouter(mw, undefined as never)).toThrow(expect.objectContaining({ code: 'ERR_DIST_INVALID_OPTIONS' }));
    expect(() => adminRouter(mw, { guard: 'yes' } as never)).toThrow(expect.objectContaining({ code: 'ERR_DIST_INVALID_OPTIONS' }));
  });

  test('every route is behind the guard', async () => {
    const { mw, pin } = setup();
    await pin('/one', 'a');
    const app = express();
    app.use('/admin', adminRouter(mw, { guard }));
    await request(app).get('/admin/pins').expect(401);
    await request(app).delete('/admin/pins?all=true').expect(401);
    await request(app).get('/admin/channels/1/health').expect(401);
    await request(app).get('/admin/affinity').expect(401);
    expect(await distributorAdmin(mw).countPins()).toEqual({ 'r one/é': 1 });
  });

  test('GET /pins, DELETE /pins?rule= / ?all=true, GET /channels/:id/health', async () => {
    const { mw, pin } = setup();
    await pin('/one', 'a');
    await pin('/one', 'b');
    await pin('/anon', 'c');
    const app = express();
    app.use('/admin', adminRouter(mw, { guard: [guard] }));
    const ok = { 'x-admin': 'yes' };
    expect((await request(app).get('/admin/pins').set(ok).expect(200)).body).toEqual({ pins: { 'r one/é': 2, _: 1 }, total: 3 });
    expect((await request(app).delete(`/admin/pins?rule=${encodeURIComponent('r one/é')}`).set(ok).expect(200)).body).toEqual({ cleared: 2 });
    expect((await request(app).delete('/admin/pins?rule=anon').set(ok).expect(400)).body.error.code).toBe('ERR_DIST_INVALID_OPTIONS');
    expect((await request(app).delete('/admin/pins').set(ok).expect(400)).body.error.code).toBe('ERR_DIST_INVALID_OPTIONS');
    expect((await request(app).delete('/admin/pins?rule=_&all=true').set(ok).expect(400)).body.error.code).toBe('ERR_DIST_INVALID_OPTIONS');
    expect((await request(app).delete('/admin/pins?all=true').set(ok).expect(200)).body).toEqual({ cleared: 1 });
    expect((await request(app).get('/admin/channels/1/health').set(ok).expect(200)).body)
      .toEqual({ id: 1, status: 1, coolingDown: false, cooldownUntil: null, disabledKeys: [2], ejectedUntil: null, coolingKeys: {}, inFlight: 0, latency: {} });
    expect((await request(app).get('/admin/channels/99/health').set(ok).expect(404)).body.error.code).toBe('invalid_channel_id');
    expect((await request(app).get('/admin/channels/abc/health').set(ok).expect(400)).body.error.code).toBe('invalid_channel_id');
  });

  test('GET /affinity: affinityReport() as JSON', async () => {
    const { mw, pin } = setup();
    const app = express();
    app.use('/admin', adminRouter(mw, { guard }));
    expect((await request(app).get('/admin/affinity').set('x-admin', 'yes').expect(200)).body).toEqual({});
    await pin('/one', 'a');
    await pin('/one', 'a');
    const body = (await request(app).get('/admin/affinity').set('x-admin', 'yes').expect(200)).body as Record<string, { lookups: number; hits: number; hitRate: number }>;
    expect(body).toEqual(distributorAdmin(mw).affinityReport());
    expect(body['r one/é']).toMatchObject({ lookups: 2, hits: 1, hitRate: 0.5 });
  });

  test('a failing store call reaches the app error handler through next(err)', async () => {
    const store = new MemoryStore();
    const broken: Store = Object.assign(Object.create(store) as Store, { countPins: () => Promise.reject(new Error('redis down')) });
    const mw = distributor({ channels: [{ id: 1, models: 'm' }], store: broken, logger: memoryLogger() });
    shutdowns.push(() => mw.shutdown(), () => store.shutdown());
    const app = express();
    app.use(adminRouter(mw, { guard: (_req, _res, next) => next() }));
    app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => {
      res.status(502).json({ caught: err.message });
    });
    expect((await request(app).get('/pins').expect(502)).body).toEqual({ caught: 'redis down' });
  });
});
