// The hot path does no per-request compilation: rule regexes are compiled once in distributor()
// and the routing index is rebuilt only on registry changes (docs/architecture.md).
import { afterAll, afterEach, describe, expect, jest, test } from '@jest/globals';
import express from 'express';
import request from 'supertest';
import { ChannelRegistry, MemoryStore, distributor, type AffinityRule, type DistributorHandler } from '../lib';
import { createApp } from './helpers/create-app';
import { RecordingStore, settle } from './helpers/recording-store';

const made: DistributorHandler[] = [];
afterAll(async () => {
  await Promise.all(made.map((m) => m.shutdown()));
});
afterEach(() => {
  jest.restoreAllMocks();
});

const rules: AffinityRule[] = [
  { name: 'valued', modelRegex: ['^gpt-4o$'], pathRegex: ['^/v1/chat'], keySources: [{ type: 'header', key: 'x-session' }], valueRegex: '^s-[0-9]+$', includeModelName: true },
  { name: 'query', modelRegex: ['(?i)^GPT-'], keySources: [{ type: 'query', key: 'conv' }] },
];

/** Counts RegExp constructor calls made from lib/ (by stack frame) while `fn` runs. */
async function regexpCallsFromLib(fn: () => Promise<void>): Promise<{ fromLib: number; total: number }> {
  const Original = RegExp;
  const stacks: string[] = [];
  const spy = jest.spyOn(global, 'RegExp').mockImplementation(function (this: unknown, ...args: unknown[]) {
    stacks.push(new Error().stack ?? '');
    return new Original(...(args as [string, string?]));
  } as unknown as (pattern: string | RegExp, flags?: string) => RegExp);
  try {
    await fn();
  } finally {
    spy.mockRestore();
  }
  const fromLib = stacks.filter((s) => s.split('\n').slice(2).some((line) => /[\\/]lib[\\/]/.test(line) && !line.includes('node_modules'))).length;
  return { fromLib, total: stacks.length };
}

function build() {
  const registry = new ChannelRegistry([
    { id: 1, models: 'gpt-4o,gpt-5,claude-3,gemini-2.0-flash', priority: 2, weight: 3 },
    { id: 2, models: 'gpt-4o,gpt-5,claude-3,gemini-2.0-flash', priority: 2, weight: 1 },
    { id: 3, models: 'gpt-4o,gpt-5', priority: 1, key: ['k1', 'k2'] },
  ]);
  const t = createApp({ channels: registry, affinity: { rules: [...rules, ...defaultRulesCopy()] } });
  made.push(t.mw);
  return { ...t, registry };
}

function defaultRulesCopy(): AffinityRule[] {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return (require('../lib') as typeof import('../lib')).defaultAffinityRules();
}

/** A mix of 100 requests over every parsing branch, affinity rule and error path. */
async function hundredRequests(app: ReturnType<typeof build>['app']): Promise<void> {
  const server = app.listen(0);
  try {
    for (let i = 0; i < 10; i++) {
      await request(server).post('/v1/chat/completions').set('x-session', `s-${i}`).send({ model: 'gpt-4o' }).expect(200);
      await request(server).post('/v1/chat/completions').set('x-session', 'no-match').send({ model: 'gpt-4o' }).expect(200);
      await request(server).post(`/v1/chat/completions?conv=c${i}`).send({ model: 'gpt-5' }).expect(200);
      await request(server).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: `k-${i % 3}` }).expect(200);
      await request(server).post('/v1/messages').send({ model: 'claude-3', metadata: { user_id: JSON.stringify({ session_id: `s${i}` }) } }).expect(200);
      await request(server).post('/v1beta/models/gemini-2.0-flash:generateContent').send({}).expect(200);
      await request(server).post('/v1/realtime?model=gpt-4o').send({}).expect(200);
      await request(server).post('/v1/chat/completions').type('form').send('model=gpt-5').expect(200);
      await request(server).post('/v1/chat/completions').set('content-type', 'application/json').send('{bad').expect(400);
      await request(server).post('/v1/chat/completions').send({ model: 'nope' }).expect(503);
    }
    await settle();
  } finally {
    server.close();
  }
}

describe('no per-request regex compilation', () => {
  test('100 requests after creation construct no RegExp from lib/', async () => {
    const { app } = build();
    // warm-up request outside the measurement (lazy module loading in dependencies)
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    const counted = await regexpCallsFromLib(() => hundredRequests(app));
    expect(counted.fromLib).toBe(0);
  });

  test('control: the same spy sees the compilations distributor() does at creation', async () => {
    const counted = await regexpCallsFromLib(async () => {
      build();
    });
    // 9 patterns: valued 3 (model, path, value) + query 1 + codex 2 + claude 3; at most once each
    expect(counted.fromLib).toBeGreaterThan(0);
    expect(counted.fromLib).toBeLessThanOrEqual(9);
  });
});

describe('no per-request index rebuild', () => {
  test('ChannelRegistry#rebuild is not called by 100 requests, only by changes', async () => {
    const { app, registry } = build();
    const rebuild = jest.spyOn(ChannelRegistry.prototype as unknown as { rebuild: () => void }, 'rebuild');
    await hundredRequests(app);
    expect(rebuild).toHaveBeenCalledTimes(0);
    // control: a change rebuilds once, and the next request sees it
    registry.upsert({ id: 4, models: 'brand-new' });
    expect(rebuild).toHaveBeenCalledTimes(1);
    const r = await request(app).post('/v1/chat/completions').send({ model: 'brand-new' }).expect(200);
    expect(r.body.channel.id).toBe(4);
    expect(rebuild).toHaveBeenCalledTimes(1);
  });
});

describe('no promise on the way when nothing is asynchronous', () => {
  /** An app that reports whether distributor() called next() before returning (synchronously). */
  function syncProbe(options: Parameters<typeof distributor>[0]) {
    const mw = distributor({ logger: { warn() {}, error() {} }, ...options });
    made.push(mw);
    const app = express();
    app.use(express.json());
    app.use((req, res, next) => {
      let returned = false;
      mw(req, res, (err?: unknown) => {
        res.locals.sync = !returned;
        next(err);
      });
      returned = true;
    });
    app.post('/v1/responses', (_req, res) => {
      res.json({ sync: res.locals.sync, channel: res.locals.channel?.id, affinity: res.locals.distribution?.affinity });
    });
    return app;
  }
  const channels = [{ id: 1, models: 'gpt-5' }, { id: 2, models: 'gpt-5' }];
  const body = { model: 'gpt-5', prompt_cache_key: 'sync-session' };

  /** Two requests of one session: a miss that pins, then a hit on the same channel; `sync` both times. */
  async function missThenHit(options: Partial<Parameters<typeof distributor>[0]>, sync: boolean): Promise<void> {
    const app = syncProbe({ channels, ...options });
    const first = await request(app).post('/v1/responses').send(body);
    await settle();
    const second = await request(app).post('/v1/responses').send(body);
    expect(first.body).toMatchObject({ sync, affinity: { hit: false } });
    expect(second.body).toMatchObject({ sync, channel: first.body.channel, affinity: { hit: true, used: true } });
  }

  test('embedded store and synchronous callbacks: next() runs before the middleware returns, pins work the same', async () => {
    await missThenHit({ context: () => ({ tokenId: 4 }), setup: () => undefined }, true);
  });

  test('an async context, an async setup or a store that answers with promises: the same result, after an await', async () => {
    await missThenHit({ context: async () => ({ tokenId: 4 }) }, false);
    await missThenHit({ setup: async () => undefined }, false);
    await missThenHit({ store: new RecordingStore() }, false);
  });

  test('any store with getPinSync is read without a promise; one whose getPinSync answers undefined is read through getPin', async () => {
    // a custom in-process store (not a MemoryStore) that offers getPinSync
    class SyncRecordingStore extends RecordingStore {
      getPinSync(key: string, refreshTtlMs?: number): string | null | undefined {
        this.calls.push({ op: 'getPinSync', args: [key, refreshTtlMs] });
        return this.inner.getPinSync(key, refreshTtlMs);
      }
    }
    const custom = new SyncRecordingStore();
    await missThenHit({ store: custom }, true);
    expect(custom.of('getPinSync')).toHaveLength(2);
    expect(custom.of('getPin')).toHaveLength(0);
    expect(custom.of('setPin')).toHaveLength(1);

    // a MemoryStore subclass that overrides getPin (to record or wrap it) keeps going through it
    const reads: string[] = [];
    class WrappedMemory extends MemoryStore {
      override async getPin(key: string, refreshTtlMs?: number): Promise<string | null> {
        reads.push(key);
        return super.getPin(key, refreshTtlMs);
      }
    }
    const wrapped = new WrappedMemory();
    try {
      await missThenHit({ store: wrapped }, false);
      expect(reads).toHaveLength(2);
      expect(reads[1]).toBe(reads[0]);
    } finally {
      wrapped.shutdown();
    }

    // a getPinSync that cannot answer now (undefined) falls back to getPin for that lookup
    class SometimesSync extends RecordingStore {
      getPinSync(key: string, refreshTtlMs?: number): string | null | undefined {
        this.calls.push({ op: 'getPinSync', args: [key, refreshTtlMs] });
        return undefined;
      }
    }
    const sometimes = new SometimesSync();
    await missThenHit({ store: sometimes }, false);
    expect(sometimes.of('getPinSync')).toHaveLength(2);
    expect(sometimes.of('getPin')).toHaveLength(2);
  });

  test('errors keep their statuses on the synchronous path: a throwing context is passed to next(err), a bad model is a 400', async () => {
    const throwing = syncProbe({ channels, context: () => { throw new Error('context broke'); } });
    const errorHandler: express.ErrorRequestHandler = (err: Error, _req, res, _next) => { res.status(500).json({ handled: err.message }); };
    throwing.use(errorHandler);
    expect((await request(throwing).post('/v1/responses').send(body)).body).toEqual({ handled: 'context broke' });
    const bad = await request(syncProbe({ channels })).post('/v1/responses').send({ model: 42 });
    expect(bad.status).toBe(400);
    expect(bad.body.error.message).toContain('model must be a string');
  });
});
