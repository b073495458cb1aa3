// Errors and secrets (docs/errors-and-validations.md, and the setup-failure 503): every error response is
// {error:{message,type:'distributor_error',code}}; channel keys, authorization header values and
// raw affinity values never appear in an error message, in res.locals.distribution or in a log line.
// Adaptation: new-api answers type 'new_api_error' with an empty code and a request-id suffix.
import { describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { ChannelStatus, DistributorError } from '../lib';
import { ctx, memoryLogger, type TestApp, trackedApps } from './helpers/create-app';
import { settle } from './helpers/recording-store';

const app = trackedApps();

describe('every error body is {error:{message,type:"distributor_error",code}}', () => {
  const { app: a } = app({
    channels: [
      { id: 1, models: 'gpt-4o' },
      { id: 2, models: 'gpt-4o', status: ChannelStatus.ManuallyDisabled },
      { id: 3, models: 'broken' },
    ],
    bodyLimit: 200,
    allowBodyGroup: true,
    usableGroups: () => [],
    setup: (ch) => {
      if (ch.id === 3) throw new Error('boom');
    },
  });
  const post = (body: string | object, headers: Record<string, string> = {}) =>
    request(a).post('/v1/chat/completions').set('content-type', 'application/json').set(headers).send(typeof body === 'string' ? body : JSON.stringify(body));

  test.each<[string, number, () => request.Test]>([
    ['invalid_request', 400, () => post('{bad')],
    ['request_too_large', 413, () => post({ model: 'gpt-4o', pad: 'x'.repeat(500) })],
    ['group_forbidden', 403, () => post({ model: 'gpt-4o', group: 'vip' })],
    ['invalid_channel_id', 400, () => post({ model: 'gpt-4o' }, ctx({ specificChannelId: 99 }))],
    ['channel_disabled', 403, () => post({ model: 'gpt-4o' }, ctx({ specificChannelId: 2 }))],
    ['channel_setup_failed', 503, () => post({ model: 'gpt-4o' }, ctx({ specificChannelId: 3 }))],
    ['model_not_allowed', 403, () => post({ model: 'gpt-4o' }, ctx({ modelLimits: ['x'] }))],
    ['model_required', 400, () => post({})],
    ['model_not_found', 503, () => post({ model: 'nope' })],
    ['model_not_found', 503, () => post({ model: 'broken' })],
  ])('%s -> %d', async (code, status, send) => {
    const r = await send();
    expect(r.status).toBe(status);
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    expect(r.body).toEqual({ error: { message: expect.any(String), type: 'distributor_error', code } });
    expect(r.body.error.message.length).toBeGreaterThan(0);
  });

  test('options.onError takes over with the DistributorError', async () => {
    const seen: DistributorError[] = [];
    const { app: b } = app({
      channels: [{ id: 1, models: 'gpt-4o' }],
      onError: (err, _req, res) => {
        seen.push(err);
        res.status(418).json({ mine: err.code });
      },
    });
    const r = await request(b).post('/v1/chat/completions').send({ model: 'nope' }).expect(418);
    expect(r.body).toEqual({ mine: 'model_not_found' });
    expect(seen[0]).toBeInstanceOf(DistributorError);
    expect(seen[0].status).toBe(503);
  });

  test('a throwing hook is logged and never breaks a request', async () => {
    const logger = memoryLogger();
    const { app: b } = app({
      channels: [{ id: 1, models: 'gpt-4o' }],
      logger,
      on: { select: () => { throw new Error('hook exploded'); } },
    });
    const r = await request(b).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.channel.id).toBe(1);
    expect(logger.text()).toContain('hook exploded');
  });
});

describe('secrets never appear in error messages, distribution or logs', () => {
  // deliberately not shaped like "sk-..." or "Bearer ..." so generic pattern masking cannot hide a leak
  const CHANNEL_KEY = 'chanKEY-7f3a9c1e55';
  const MULTI_KEYS = ['multiKEY-a1b2c3d4e5', 'multiKEY-f6a7b8c9d0'];
  const AUTH_TOKEN = 'tokAUTH-0042deadbeef';
  const API_KEY = 'xapiKEY-9988776655';
  const RAW_AFFINITY = 'rawAFF-session-31337';
  const SECRETS = [CHANNEL_KEY, ...MULTI_KEYS, AUTH_TOKEN, API_KEY, RAW_AFFINITY];

  /** setup that echoes every secret it can see into its error message */
  const leakySetup = (failIds: number[]) => (ch: { id: number; key?: string }, req: { headers: Record<string, unknown>; body?: unknown }) => {
    if (!failIds.includes(ch.id)) return;
    const body = req.body as { prompt_cache_key?: string } | undefined;
    throw new Error(
      `upstream rejected channel ${ch.id} key=${ch.key} auth=${String(req.headers.authorization)} ` +
        `x-api-key=${String(req.headers['x-api-key'])} session=${body?.prompt_cache_key}`,
    );
  };

  function leaks(text: string): string[] {
    return SECRETS.filter((s) => text.includes(s));
  }

  const send = (a: TestApp['app'], extraCtx: Record<string, unknown> = {}) =>
    request(a)
      .post('/v1/responses')
      .set('authorization', `Bearer ${AUTH_TOKEN}`)
      .set('x-api-key', API_KEY)
      .set(ctx(extraCtx))
      .send({ model: 'gpt-5', prompt_cache_key: RAW_AFFINITY });

  test('every channel fails setup -> 503 naming the setup error, with keys, auth and raw value redacted', async () => {
    const logger = memoryLogger();
    const { app: a } = app({
      logger,
      channels: [
        { id: 1, models: 'gpt-5', key: CHANNEL_KEY, priority: 2 },
        { id: 2, models: 'gpt-5', key: MULTI_KEYS },
      ],
      setup: leakySetup([1, 2]),
    });
    const r = await send(a).expect(503);
    await settle();
    expect(r.body.error.code).toBe('model_not_found');
    expect(r.body.error.message).toContain('upstream rejected channel 2');
    expect(leaks(JSON.stringify(r.body))).toEqual([]);
    expect(logger.lines.length).toBeGreaterThan(0);
    expect(logger.text()).toContain('upstream rejected channel 1');
    expect(leaks(logger.text())).toEqual([]);
  });

  test('fallback that succeeds: attempts reasons and logs are redacted', async () => {
    const logger = memoryLogger();
    const { app: a } = app({
      logger,
      channels: [
        { id: 1, models: 'gpt-5', key: CHANNEL_KEY, priority: 2 },
        { id: 2, models: 'gpt-5', key: 'fine-key-000000' },
      ],
      setup: leakySetup([1]),
    });
    const r = await send(a, { tokenId: 5 }).expect(200);
    await settle();
    expect(r.body.channel.id).toBe(2);
    const d = JSON.stringify(r.body.distribution);
    expect(d).toContain('upstream rejected channel 1');
    expect(leaks(d)).toEqual([]);
    expect(leaks(logger.text())).toEqual([]);
  });

  test('a stale pinned channel failing setup: the raw affinity value stays out of messages and logs', async () => {
    const logger = memoryLogger();
    const fail = { on: false };
    const { app: a } = app({
      logger,
      channels: [{ id: 1, models: 'gpt-5', key: CHANNEL_KEY }],
      setup: (ch, req) => {
        if (fail.on) leakySetup([ch.id])(ch, req as never);
      },
    });
    await send(a).expect(200);
    await settle();
    fail.on = true;
    const r = await send(a).expect(503);
    expect(r.body.error.message).toContain('upstream rejected');
    expect(leaks(JSON.stringify(r.body))).toEqual([]);
    expect(leaks(logger.text())).toEqual([]);
  });

  test('specific channel setup failure -> 503 channel_setup_failed, redacted', async () => {
    const logger = memoryLogger();
    const { app: a } = app({ logger, channels: [{ id: 7, models: 'gpt-5', key: CHANNEL_KEY }], setup: leakySetup([7]) });
    const r = await send(a, { specificChannelId: 7 }).expect(503);
    await settle();
    expect(r.body.error.code).toBe('channel_setup_failed');
    expect(r.body.error.message).toContain('upstream rejected channel 7');
    expect(leaks(JSON.stringify(r.body))).toEqual([]);
    expect(leaks(logger.text())).toEqual([]);
  });

  test('a relay retry() with an upstream error mentioning secrets: attempts and logs are redacted', async () => {
    const logger = memoryLogger();
    const { app: a } = app(
      { logger, channels: [{ id: 1, models: 'gpt-5', key: CHANNEL_KEY, priority: 2 }, { id: 2, models: 'gpt-5' }], affinity: { enabled: true, rules: [] } },
      {
        handler: (req, res) => {
          const d = res.locals.distribution!;
          const err = new Error(`401 from upstream for key ${res.locals.channel?.key} auth ${String(req.headers.authorization)} ${String(req.headers['x-api-key'])}`);
          void d.retry({ status: 401, error: err }).then((next) => res.json({ next: next?.id ?? null, distribution: JSON.parse(JSON.stringify(d)) }));
        },
      },
    );
    const r = await send(a).expect(200);
    await settle();
    expect(r.body.next).toBe(2);
    const d = JSON.stringify(r.body.distribution);
    expect(d).toContain('401 from upstream');
    expect(leaks(d)).toEqual([]);
    expect(leaks(logger.text())).toEqual([]);
  });
});
