// Express 4 and 5: the suite runs on both (.ci/express4.sh); these tests pin the parts that differ:
// async errors must reach the app's error handler through next(err), and next runs once.
import { afterAll, describe, expect, jest, test } from '@jest/globals';
import express, { type NextFunction, type Request, type Response } from 'express';
import request from 'supertest';
import { distributor, type DistributorHandler, type DistributorOptions } from '../lib';
import { createApp, memoryLogger } from './helpers/create-app';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const EXPRESS_MAJOR = Number((require('express/package.json') as { version: string }).version.split('.')[0]);
const shutdowns: DistributorHandler[] = [];
afterAll(async () => {
  await Promise.all(shutdowns.map((m) => m.shutdown()));
});

function appWith(options: Partial<DistributorOptions>) {
  const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o' }], logger: memoryLogger(), ...options });
  shutdowns.push(mw);
  const app = express();
  const seen: Error[] = [];
  app.use(mw);
  app.use((_req, res) => {
    res.json({ id: res.locals.channel?.id ?? null });
  });
  app.use((err: Error, _req: Request, res: Response, _next: NextFunction) => {
    seen.push(err);
    res.status(599).json({ caught: err.message });
  });
  return { app, seen };
}

describe(`on express ${EXPRESS_MAJOR}`, () => {
  test('runs on express 4 or 5', () => {
    expect([4, 5]).toContain(EXPRESS_MAJOR);
  });

  test('an async context() rejection reaches the 4-arg error handler via next(err)', async () => {
    const { app, seen } = appWith({
      context: async () => {
        await new Promise((r) => setTimeout(r, 1));
        throw new Error('auth backend down');
      },
    });
    const r = await request(app).post('/').send({ model: 'gpt-4o' }).expect(599);
    expect(r.body).toEqual({ caught: 'auth backend down' });
    expect(seen).toHaveLength(1);
  });

  test('an async extractModel() rejection reaches it too', async () => {
    const { app } = appWith({ extractModel: async () => Promise.reject(new Error('parser broke')) });
    expect((await request(app).post('/').send({ model: 'gpt-4o' }).expect(599)).body).toEqual({ caught: 'parser broke' });
  });

  test('a synchronous throw in shouldSelect() reaches it too', async () => {
    const { app } = appWith({
      shouldSelect: () => {
        throw new Error('filter broke');
      },
    });
    expect((await request(app).post('/').send({ model: 'gpt-4o' }).expect(599)).body).toEqual({ caught: 'filter broke' });
  });

  test('a setup() that throws a plain Error is a fallback, not an error response', async () => {
    const { app, seen } = appWith({
      channels: [{ id: 1, models: 'gpt-4o', priority: 1 }, { id: 2, models: 'gpt-4o' }],
      setup: async (ch) => {
        if (ch.id === 1) throw new TypeError('cannot build client');
      },
    });
    expect((await request(app).post('/').send({ model: 'gpt-4o' }).expect(200)).body).toEqual({ id: 2 });
    expect(seen).toEqual([]);
  });

  test('next is called exactly once, with the error, when called directly', async () => {
    const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o' }], logger: memoryLogger(), context: () => Promise.reject(new Error('nope')) });
    shutdowns.push(mw);
    const next = jest.fn();
    const req = Object.assign(Object.create(express.request) as Request, { headers: { 'content-type': 'application/json' }, body: { model: 'gpt-4o' }, method: 'POST', url: '/', _body: true });
    const res = Object.assign(Object.create(express.response) as Response, { locals: {}, once: () => res, setHeader: () => res });
    mw(req, res, next);
    await new Promise((r) => setTimeout(r, 20));
    expect(next).toHaveBeenCalledTimes(1);
    expect(next).toHaveBeenCalledWith(expect.objectContaining({ message: 'nope' }));
  });

  test('the test app catch-all answers on any path and method (no version-specific path syntax)', async () => {
    const { app, mw } = createApp({ channels: [{ id: 1, models: 'gpt-4o' }] });
    shutdowns.push(mw);
    for (const path of ['/', '/v1/chat/completions', '/a/b/c?x=1']) {
      const r = await request(app).post(path).send({ model: 'gpt-4o' }).expect(200);
      expect(r.body.channel.id).toBe(1);
    }
    await request(app).put('/v1/x').send({ model: 'gpt-4o' }).expect(200);
  });
});
