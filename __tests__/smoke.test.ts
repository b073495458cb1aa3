import { describe, expect, test, afterAll } from '@jest/globals';
import request from 'supertest';
import { createApp } from './helpers/create-app';

describe('smoke', () => {
  const { app, mw } = createApp({ channels: [{ id: 1, models: 'gpt-4o', key: 'sk-secret-1' }, { id: 2, models: 'gpt-4o', priority: -1 }] });
  afterAll(() => mw.shutdown());
  test('selects the highest tier', async () => {
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.channel.id).toBe(1);
    expect(r.body.channel.key).toBe('sk-secret-1');
    expect(r.body.distribution.selectedGroup).toBe('default');
    expect(r.body.distribution.tried).toEqual([1]);
  });
  test('503 for unknown model', async () => {
    const r = await request(app).post('/v1/chat/completions').send({ model: 'nope' }).expect(503);
    expect(r.body).toEqual({ error: { message: 'No available channel for model nope under group default', type: 'distributor_error', code: 'model_not_found' } });
  });
});
