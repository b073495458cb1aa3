// health.probe: auto-disabled channels come back when the user's check passes; manual ones never.
import { afterEach, expect, test } from '@jest/globals';
import request from 'supertest';
import { ChannelStatus, MemoryStore, type Channel } from '../lib';
import { createApp, memoryLogger } from './helpers/create-app';

const stops: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (stops.length) await stops.pop()!();
});
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a 401 auto-disables; the probe re-enables it once its check passes; status 2 is never probed', async () => {
  let healthy = false;
  const probed: number[] = [];
  const events: string[] = [];
  const logger = memoryLogger();
  const { app, mw } = createApp({
    channels: [{ id: 1, models: 'm', priority: 1 }, { id: 2, models: 'm', status: ChannelStatus.ManuallyDisabled }, { id: 3, models: 'm' }],
    logger,
    retry: { times: 0 },
    health: {
      autoDisable: {},
      probe: {
        intervalMs: 40,
        check: (ch: Channel) => {
          probed.push(ch.id);
          if (ch.id === 1 && probed.filter((x) => x === 1).length === 1) throw new Error('probe transport down');
          return healthy;
        },
      },
    },
    on: { health: (e) => events.push(`${e.event}:${e.channelId}`) },
  }, {
    handler: (_req, res) => {
      const id = res.locals.channel!.id;
      // the relay reports the upstream's 401 (a status seen only at finish never feeds health)
      if (id === 1 && !healthy) void res.locals.distribution!.fail({ status: 401 });
      res.status(id === 1 && !healthy ? 401 : 200).json({ id });
    },
  });
  stops.push(() => mw.shutdown());
  await request(app).post('/v1/chat/completions').send({ model: 'm' }).expect(401);
  await sleep(20);
  expect(mw.registry.get(1)?.status).toBe(ChannelStatus.AutoDisabled);
  const next = await request(app).post('/v1/chat/completions').send({ model: 'm' }).expect(200);
  expect(next.body.id).toBe(3);
  await sleep(150); // several probe rounds while unhealthy (one of them throws)
  expect(mw.registry.get(1)?.status).toBe(ChannelStatus.AutoDisabled);
  expect(probed).toContain(1);
  expect(probed).not.toContain(2);
  expect(probed).not.toContain(3);
  expect(logger.lines.some((l) => l.message === 'health probe threw')).toBe(true);
  healthy = true;
  await sleep(150);
  expect(mw.registry.get(1)?.status).toBe(ChannelStatus.Enabled);
  expect(mw.registry.get(2)?.status).toBe(ChannelStatus.ManuallyDisabled);
  expect(events).toEqual(['auto_disabled:1', 're_enabled:1']);
  const back = await request(app).post('/v1/chat/completions').send({ model: 'm' }).expect(200);
  expect(back.body.id).toBe(1); // the higher tier serves again
});

test('the re-enable is shared: another distributor on the same store sees status 1 again', async () => {
  const store = new MemoryStore();
  stops.push(async () => store.shutdown());
  let healthy = false;
  const a = createApp({ channels: [{ id: 1, models: 'm' }, { id: 2, models: 'm', priority: -1 }], store, retry: { times: 0 },
    health: { autoDisable: {}, probe: { intervalMs: 30, check: () => healthy } } }, {
    handler: (_req, res) => {
      if (res.locals.channel!.id === 1) void res.locals.distribution!.fail({ status: 401 });
      res.status(res.locals.channel!.id === 1 ? 401 : 200).json({});
    },
  });
  const b = createApp({ channels: [{ id: 1, models: 'm' }, { id: 2, models: 'm', priority: -1 }], store });
  stops.push(() => a.mw.shutdown(), () => b.mw.shutdown());
  await request(a.app).post('/v1/chat/completions').send({ model: 'm' }).expect(401);
  await sleep(30);
  expect(b.mw.registry.get(1)?.status).toBe(ChannelStatus.AutoDisabled);
  healthy = true;
  await sleep(120);
  expect(a.mw.registry.get(1)?.status).toBe(ChannelStatus.Enabled);
  expect(b.mw.registry.get(1)?.status).toBe(ChannelStatus.Enabled);
});

test('an invalid probe is rejected at creation', () => {
  expect(() => createApp({ channels: [{ id: 1, models: 'm' }], health: { probe: {} as never } })).toThrow(/health.probe/);
});
