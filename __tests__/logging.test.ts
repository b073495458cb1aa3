// Logging (default winston logger, redaction format, injected loggers, per-request debug lines)
// and the opt-in decision trace.
import { afterAll, describe, expect, jest, test } from '@jest/globals';
import { Writable } from 'node:stream';
import request from 'supertest';
import winston from 'winston';
import { createDefaultLogger, redactFormat, redactText } from '../lib/entry/logging';
import { distributor, type DistributorHandler } from '../lib';
import { runtimeOf } from '../lib/distributor';
import { createApp, memoryLogger } from './helpers/create-app';

const shutdowns: DistributorHandler[] = [];
afterAll(async () => {
  await Promise.all(shutdowns.map((m) => m.shutdown()));
});

/** Lines a winston logger writes, with its console transport silenced. */
function capture(logger: winston.Logger): string[] {
  const lines: string[] = [];
  for (const t of logger.transports) t.silent = true;
  logger.add(new winston.transports.Stream({
    stream: new Writable({
      write(chunk: Buffer, _enc, cb) {
        lines.push(chunk.toString().trim());
        cb();
      },
    }),
  }));
  return lines;
}

const rule = { name: 'sess', modelRegex: ['^gpt-'], keySources: [{ type: 'header' as const, key: 'x-session' }], includeRuleName: true };

describe('default logger', () => {
  test('winston at level warn, with a component field, and secrets redacted', () => {
    const logger = createDefaultLogger() as winston.Logger;
    expect(logger.level).toBe('warn');
    const lines = capture(logger);
    logger.debug('not shown');
    logger.info('not shown either');
    logger.warn('upstream said Bearer abc.def and sk-abcdef123456', {
      apiKey: 'sk-live-1', authorization: 'Bearer xyz', token: 'tok-1', password: 'pw', channelId: 3, keyIndex: 2, tokenId: 7,
      headers: { authorization: 'Basic Zm9v', 'x-api-key': 'k-1', accept: 'json' },
      channels: [{ id: 1, key: 'sk-nested-1' }],
      error: new Error('failed with Bearer err-token'),
      detail: 'retry with sk-inlined12345',
    });
    expect(lines).toHaveLength(1);
    const out = JSON.parse(lines[0]) as Record<string, unknown>;
    expect(out).toMatchObject({
      level: 'warn',
      component: 'express-channel-distributor',
      message: 'upstream said Bearer [REDACTED] and [REDACTED]',
      apiKey: '[REDACTED]', authorization: '[REDACTED]', token: '[REDACTED]', password: '[REDACTED]',
      channelId: 3, keyIndex: 2, tokenId: 7,
      headers: { authorization: '[REDACTED]', 'x-api-key': '[REDACTED]', accept: 'json' },
      channels: [{ id: 1, key: '[REDACTED]' }],
      error: { name: 'Error', message: 'failed with Bearer [REDACTED]' },
      detail: 'retry with [REDACTED]',
    });
    expect(lines[0]).not.toMatch(/sk-live|xyz|tok-1|Zm9v|k-1"|sk-nested|err-token|sk-inlined|abc\.def/);
  });

  test('redactFormat works in a user logger', () => {
    const logger = winston.createLogger({ level: 'info', format: winston.format.combine(redactFormat(), winston.format.json()), transports: [new winston.transports.Console()] });
    const lines = capture(logger);
    logger.info('hello', { secret: 's3cr3t', model: 'gpt-4o' });
    expect(JSON.parse(lines[0])).toEqual({ level: 'info', message: 'hello', secret: '[REDACTED]', model: 'gpt-4o' });
    expect(redactText('Authorization: Bearer abc')).toBe('Authorization: Bearer [REDACTED]');
  });

  test('a distributor without a logger uses the default one', () => {
    const mw = distributor({ channels: [{ id: 1, models: 'm' }], validate: false });
    shutdowns.push(mw);
    const logger = runtimeOf(mw)?.cfg.logger as winston.Logger;
    expect(logger.level).toBe('warn');
    expect(logger.defaultMeta).toEqual({ component: 'express-channel-distributor' });
  });
});

describe('injected loggers', () => {
  test('console fits (warnings go to console.warn)', () => {
    const warn = jest.spyOn(console, 'warn').mockImplementation(() => undefined);
    try {
      const mw = distributor({ channels: [{ id: 1, models: 'm' }], logger: console, retyrr: {} } as never);
      shutdowns.push(mw);
      expect(warn).toHaveBeenCalledWith(expect.stringContaining('WRN_DIST_UNKNOWN_OPTION'), expect.objectContaining({ code: 'WRN_DIST_UNKNOWN_OPTION' }));
    } finally {
      warn.mockRestore();
    }
  });

  test('a winston logger at level warn gets no per-request debug lines; at debug it does', async () => {
    const quiet = winston.createLogger({ level: 'warn', transports: [new winston.transports.Console()] });
    const loud = winston.createLogger({ level: 'debug', transports: [new winston.transports.Console()] });
    const quietLines = capture(quiet);
    const loudLines = capture(loud);
    for (const logger of [quiet, loud]) {
      const { app, mw } = createApp({ channels: [{ id: 1, models: 'gpt-4o' }], logger });
      shutdowns.push(mw);
      await request(app).post('/').send({ model: 'gpt-4o' }).expect(200);
    }
    expect(quietLines).toEqual([]);
    expect(loudLines.map((l) => (JSON.parse(l) as { message: string }).message)).toEqual(['channel selected']);
  });
});

describe('per-request decisions at debug level', () => {
  test('rule, key fingerprint, channel ids, stale reason and attempts; never the raw value or a key', async () => {
    const logger = memoryLogger();
    const { app, mw } = createApp({
      channels: [{ id: 1, models: 'gpt-4o', key: 'sk-first-secret', priority: 2 }, { id: 2, models: 'gpt-4o', key: 'sk-second-secret', priority: 1 }],
      affinity: { rules: [rule] },
      logger,
      setup: (ch) => {
        if (ch.id === 1 && ch.key) throw new Error(`bad key ${ch.key}`);
      },
    });
    shutdowns.push(mw);
    const session = 'session-raw-value-123';
    await request(app).post('/').set('x-session', session).send({ model: 'gpt-4o' }).expect(200);
    const selected = logger.lines.find((l) => l.level === 'debug' && l.message === 'channel selected');
    expect(selected?.meta).toMatchObject({
      channelId: 2, rule: 'sess', fingerprint: expect.stringMatching(/^[0-9a-f]{12}$/), tried: [1, 2],
      attempts: [{ channelId: 1, phase: 'setup', reason: 'bad key [REDACTED]' }],
    });
    // A stale pin: channel 2 goes away.
    await new Promise((r) => setTimeout(r, 5));
    mw.registry.remove(2);
    await request(app).post('/').set('x-session', session).send({ model: 'gpt-4o' }).expect(503);
    const stale = logger.lines.find((l) => l.message === 'stale affinity pin');
    expect(stale?.meta).toMatchObject({ rule: 'sess', channelId: 2, reason: 'missing', cleared: true, fingerprint: (selected?.meta as { fingerprint: string }).fingerprint });
    expect(logger.text()).not.toMatch(/session-raw-value|sk-first-secret|sk-second-secret/);
  });
});

describe('decision trace', () => {
  test('off by default', async () => {
    const { app, mw } = createApp({ channels: [{ id: 1, models: 'gpt-4o' }] });
    shutdowns.push(mw);
    const r = await request(app).post('/').send({ model: 'gpt-4o' }).expect(200);
    expect(r.headers['x-distributor-trace']).toBeUndefined();
    expect(r.body.distribution.trace).toEqual(['select ch=1']);
  });

  test('x-distributor-trace and res.locals.distribution.trace: short, readable, without secrets', async () => {
    const { app, mw } = createApp({
      channels: [{ id: 3, models: 'gpt-4o', priority: 2, key: 'sk-three' }, { id: 5, models: 'gpt-4o', priority: 1, key: 'sk-five' }],
      affinity: { rules: [rule] },
      traceHeader: true,
    }, {
      handler: async (req, res) => {
        if (req.headers['x-upstream']) await res.locals.distribution?.retry({ status: Number(req.headers['x-upstream']) });
        res.json({ trace: res.locals.distribution?.trace });
      },
    });
    shutdowns.push(mw);
    const first = await request(app).post('/').set('x-session', 'raw-session').send({ model: 'gpt-4o' }).expect(200);
    expect(first.headers['x-distributor-trace']).toBe('affinity:miss rule=sess -> select ch=3');
    await new Promise((r) => setTimeout(r, 5));
    const second = await request(app).post('/').set({ 'x-session': 'raw-session', 'x-upstream': '429' }).send({ model: 'gpt-4o' }).expect(200);
    expect(second.headers['x-distributor-trace']).toBe('affinity:hit ch=3 -> upstream 429 ch=3 -> retry ch=5');
    expect(second.body.trace).toEqual(['affinity:hit ch=3', 'upstream 429 ch=3', 'retry ch=5']);
    expect(JSON.stringify([first.headers, second.headers, second.body])).not.toMatch(/raw-session|sk-three|sk-five/);
  });

  test('a rule name outside Latin-1 is percent-encoded in the header instead of failing the request', async () => {
    const { app, mw } = createApp({
      channels: [{ id: 1, models: 'gpt-4o' }],
      affinity: { rules: [{ ...rule, name: '会话' }] },
      traceHeader: true,
    });
    shutdowns.push(mw);
    const r = await request(app).post('/').set('x-session', 's').send({ model: 'gpt-4o' }).expect(200);
    expect(r.headers['x-distributor-trace']).toBe(`affinity:miss rule=${encodeURIComponent('会话')} -> select ch=1`);
    expect(r.body.distribution.trace[0]).toBe('affinity:miss rule=会话');
  });

  test('... also when the header is rewritten after a retry', async () => {
    const { app, mw } = createApp({
      channels: [{ id: 1, models: 'gpt-4o', priority: 1 }, { id: 2, models: 'gpt-4o' }],
      affinity: { rules: [{ ...rule, name: '会话' }] },
      traceHeader: true,
    }, {
      handler: async (_req, res, next) => {
        try {
          const ch = await res.locals.distribution?.retry({ status: 500 });
          res.json({ id: ch?.id ?? null });
        } catch (e) {
          next(e);
        }
      },
    });
    shutdowns.push(mw);
    const r = await request(app).post('/').set('x-session', 's').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body).toEqual({ id: 2 });
    expect(r.headers['x-distributor-trace']).toBe(`affinity:miss rule=${encodeURIComponent('会话')} -> select ch=1 -> upstream 500 ch=1 -> retry ch=2`);
  });
});
