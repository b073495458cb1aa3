// Request context and the order of checks (docs/channels-and-selection.md), as in new-api.
// Adaptations: the token is given as a RequestContext (res.locals.token) instead of new-api's
// `sk-<key>-<channelId>` parsing; codes model_not_allowed / invalid_channel_id / channel_disabled /
// channel_setup_failed replace new-api's empty code; "limit map absent" (S11) becomes
// `modelLimits: []` (an array with no model), while null/undefined means "no limits".
import { afterAll, describe, expect, test } from '@jest/globals';
import type { NextFunction, Request, Response } from 'express';
import request from 'supertest';
import { ChannelStatus, type ChannelInput, type DistributorHandler, type DistributorOptions } from '../lib';
import { createApp, ctx, type TestApp } from './helpers/create-app';
import { RecordingStore } from './helpers/recording-store';

const made: DistributorHandler[] = [];
function app(options: Partial<DistributorOptions> & { channels?: DistributorOptions['channels'] } = {}, extra?: Parameters<typeof createApp>[1]): TestApp {
  const t = createApp({ channels: channels(), ...options }, extra);
  made.push(t.mw);
  return t;
}
afterAll(async () => {
  await Promise.all(made.map((m) => m.shutdown()));
});

function channels(): ChannelInput[] {
  return [
    { id: 1, models: 'gpt-4o,gpt-4o-mini,gpt-5', key: 'sk-one-aaaaaaaa' },
    { id: 2, group: 'vip', models: 'gpt-4o' },
    { id: 7, models: 'other-model', key: 'sk-seven-bbbbbbbb' },
    { id: 8, status: ChannelStatus.ManuallyDisabled, models: 'gpt-4o' },
  ];
}

function expectError(body: unknown, code: string, message?: string): void {
  expect(body).toEqual({ error: { message: expect.any(String), type: 'distributor_error', code } });
  if (message) expect((body as { error: { message: string } }).error.message).toContain(message);
}

/** Calls retry() once with the given status and reports what happened. */
function retryOnce(req: Request, res: Response, _next: NextFunction): void {
  const d = res.locals.distribution!;
  const first = res.locals.channel?.id ?? null;
  void d.retry({ status: Number(req.headers['x-fail'] ?? 500) }).then((next) => {
    res.json({ first, next: next?.id ?? null, stopReason: d.stopReason ?? null, tried: d.tried, affinity: d.affinity ?? null });
  });
}

describe('S10: model limits (403 model_not_allowed), checked before affinity and selection', () => {
  test('model outside modelLimits -> 403 "This token has no access to model gpt-4o-mini"', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ modelLimits: ['gpt-4o'] })).send({ model: 'gpt-4o-mini' }).expect(403);
    expectError(r.body, 'model_not_allowed', 'This token has no access to model gpt-4o-mini');
  });

  test('a model in modelLimits passes', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ modelLimits: ['gpt-4o', 'gpt-4o-mini'] })).send({ model: 'gpt-4o-mini' }).expect(200);
    expect(r.body.channel.id).toBe(1);
  });

  test('checked before affinity (no store read) and before selection (403, not 503 for an unserved model)', async () => {
    const store = new RecordingStore();
    const { app: a } = app({ store });
    const r = await request(a).post('/v1/responses').set(ctx({ modelLimits: ['gpt-4o'] })).send({ model: 'gpt-unserved', prompt_cache_key: 'K1' }).expect(403);
    expectError(r.body, 'model_not_allowed');
    expect(store.of('getPin')).toHaveLength(0);
    // control: without limits the same request reads the store (so the assertion above can fail)
    await request(a).post('/v1/responses').send({ model: 'gpt-unserved', prompt_cache_key: 'K1' }).expect(503);
    expect(store.of('getPin')).toHaveLength(1);
  });
});

describe('S11 adapted: modelLimits [] -> 403 "no access to any models"; null/absent -> no limits', () => {
  test('empty array', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ modelLimits: [] })).send({ model: 'gpt-4o' }).expect(403);
    expectError(r.body, 'model_not_allowed', 'This token has no access to any models');
  });

  test('null', async () => {
    const { app: a } = app();
    await request(a).post('/v1/chat/completions').set(ctx({ modelLimits: null })).send({ model: 'gpt-4o' }).expect(200);
  });
});

describe('S12: specific channel (admin pin via context.specificChannelId)', () => {
  test('S12: channel status 2 -> 403 channel_disabled "This channel has been disabled"', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 8 })).send({ model: 'gpt-4o' }).expect(403);
    expectError(r.body, 'channel_disabled', 'This channel has been disabled');
  });

  test('S12: status 1 -> that channel even when its model list, the group and modelLimits would reject, and without a model', async () => {
    const { app: a } = app();
    const withModel = await request(a)
      .post('/v1/chat/completions')
      .set(ctx({ specificChannelId: 7, group: 'vip', modelLimits: ['gpt-4o'] }))
      .send({ model: 'gpt-4o-mini' })
      .expect(200);
    expect(withModel.body.channel.id).toBe(7);
    expect(withModel.body.channel.key).toBe('sk-seven-bbbbbbbb');
    expect(withModel.body.distribution.tried).toEqual([7]);
    const noModel = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 7 })).send({ messages: [] }).expect(200);
    expect(noModel.body.channel.id).toBe(7);
  });

  test('a specific channel ignores a body group that the caller may not use (allowBodyGroup)', async () => {
    const { app: a } = app({ allowBodyGroup: true, usableGroups: () => ['default'] });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 7 })).send({ model: 'gpt-4o', group: 'vip' }).expect(200);
    expect(r.body.channel.id).toBe(7);
    // control: the same body without the specific channel is forbidden
    await request(a).post('/v1/chat/completions').send({ model: 'gpt-4o', group: 'vip' }).expect(403);
  });

  test.each([[999], [-1], [1.5], ['abc']])('unknown or malformed id %p -> 400 invalid_channel_id', async (id) => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: id as number })).send({ model: 'gpt-4o' }).expect(400);
    expectError(r.body, 'invalid_channel_id', 'Invalid channel ID');
  });

  test('setup failure -> 503 channel_setup_failed, and no fallback to another channel', async () => {
    const setupCalls: number[] = [];
    const { app: a } = app({
      setup: (ch) => {
        setupCalls.push(ch.id);
        if (ch.id === 7) throw new Error('upstream config broken');
      },
    });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 7 })).send({ model: 'gpt-4o' }).expect(503);
    expectError(r.body, 'channel_setup_failed');
    expect(setupCalls).toEqual([7]);
  });

  test('no affinity: the store is never read nor written and distribution.affinity is absent', async () => {
    const store = new RecordingStore();
    const { app: a } = app({ store });
    const r = await request(a).post('/v1/responses').set(ctx({ specificChannelId: 1 })).send({ model: 'gpt-5', prompt_cache_key: 'K-specific' }).expect(200);
    expect(r.body.channel.id).toBe(1);
    expect(r.body.distribution.affinity).toBeUndefined();
    expect(store.pinKeys()).toEqual([]);
    // control: the same request without the specific channel uses affinity
    const r2 = await request(a).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 'K-specific' }).expect(200);
    expect(r2.body.distribution.affinity).toMatchObject({ rule: 'codex cli trace' });
    expect(store.of('getPin').length).toBeGreaterThan(0);
  });

  test('no retry: retry() -> null with stopReason specific_channel', async () => {
    const { app: a } = app({}, { handler: retryOnce });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 1 })).send({ model: 'gpt-4o' }).expect(200);
    expect(r.body).toMatchObject({ first: 1, next: null, stopReason: 'specific_channel', tried: [1] });
    // control: a normal request with another eligible channel is retried
    const { app: b } = app({ channels: [{ id: 1, models: 'gpt-4o' }, { id: 3, models: 'gpt-4o', priority: -1 }] }, { handler: retryOnce });
    const r2 = await request(b).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r2.body).toMatchObject({ first: 1, next: 3, stopReason: null });
  });
});

describe('the order of checks: parse (400/413), specific channel (400/403), model limits (403), model required (400), selection (503)', () => {
  test('parse 400 beats an unknown specific channel', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 999 })).set('content-type', 'application/json').send('{bad').expect(400);
    expectError(r.body, 'invalid_request');
  });

  test('413 beats a disabled specific channel', async () => {
    const { app: a } = app({ bodyLimit: 50 });
    const r = await request(a).post('/v1/chat/completions').set(ctx({ specificChannelId: 8 })).send({ model: 'gpt-4o', pad: 'x'.repeat(200) }).expect(413);
    expectError(r.body, 'request_too_large');
  });

  test('specific channel 400 / 403 beat model limits', async () => {
    const { app: a } = app();
    const limits = { modelLimits: ['nothing'] };
    expectError((await request(a).post('/v1/chat/completions').set(ctx({ ...limits, specificChannelId: 999 })).send({ model: 'gpt-4o' }).expect(400)).body, 'invalid_channel_id');
    expectError((await request(a).post('/v1/chat/completions').set(ctx({ ...limits, specificChannelId: 8 })).send({ model: 'gpt-4o' }).expect(403)).body, 'channel_disabled');
  });

  test('model limits 403 beat model required 400', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ modelLimits: ['gpt-4o'] })).send({ messages: [] }).expect(403);
    expectError(r.body, 'model_not_allowed');
  });

  test('model required 400 beats selection 503', async () => {
    const { app: a } = app({ channels: [] });
    expectError((await request(a).post('/v1/chat/completions').send({}).expect(400)).body, 'model_required');
    expectError((await request(a).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(503)).body, 'model_not_found');
  });
});

describe('options.context', () => {
  test('the default reads res.locals.token (group)', async () => {
    const { app: a } = app();
    const r = await request(a).post('/v1/chat/completions').set(ctx({ group: 'vip' })).send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.channel.id).toBe(2);
    expect(r.body.distribution.group).toBe('vip');
  });

  test('an async options.context replaces res.locals.token', async () => {
    const { app: a } = app({ context: async (req) => ({ group: String(req.headers['x-group'] ?? 'default') }) });
    const r = await request(a).post('/v1/chat/completions').set('x-group', 'vip').set(ctx({ group: 'default' })).send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.channel.id).toBe(2);
  });

  test('a disabled channel is never selected by normal selection', async () => {
    const { app: a } = app({ channels: [{ id: 8, status: ChannelStatus.ManuallyDisabled, models: 'gpt-4o' }] });
    expectError((await request(a).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(503)).body, 'model_not_found');
  });
});
