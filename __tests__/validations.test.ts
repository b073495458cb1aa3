// Creation-time validations: a code per warning, once per process and subject, switchable by
// name, and never breaking the factory or a request.
import { afterEach, describe, expect, jest, test } from '@jest/globals';
import cluster from 'node:cluster';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import express from 'express';
import request from 'supertest';
import { ChannelRegistry, MemoryStore, distributor, type DistributorHandler, type DistributorOptions, type Logger } from '../lib';
import { VALIDATION_CODES } from '../lib/entry/logging';
import { resetValidations } from '../lib/validations';
import { memoryLogger } from './helpers/create-app';

type MemLogger = ReturnType<typeof memoryLogger>;
const made: DistributorHandler[] = [];
const envBefore = { ...process.env };

function make(options: Partial<DistributorOptions>, logger: Logger = memoryLogger()): DistributorHandler {
  const mw = distributor({ channels: [{ id: 1, models: 'gpt-4o' }], logger, ...options } as DistributorOptions);
  made.push(mw);
  return mw;
}

/** `[level, code]` of every validation line. */
const codes = (l: MemLogger) => l.lines.filter((x) => (x.meta as { code?: string } | undefined)?.code).map((x) => [x.level, (x.meta as { code: string }).code]);
const messages = (l: MemLogger, code: string) => l.lines.filter((x) => (x.meta as { code?: string } | undefined)?.code === code).map((x) => x.message);

afterEach(async () => {
  await Promise.all(made.splice(0).map((m) => m.shutdown()));
  resetValidations();
  for (const k of Object.keys(process.env)) if (!(k in envBefore)) delete process.env[k];
  Object.assign(process.env, envBefore);
  jest.restoreAllMocks();
});

describe('codes', () => {
  test('every check has a unique WRN_DIST_* / ERR_DIST_* code', () => {
    const values = Object.values(VALIDATION_CODES);
    expect(new Set(values).size).toBe(values.length);
    for (const c of values) expect(c).toMatch(/^(WRN|ERR)_DIST_[A-Z_]+$/);
  });

  test('a clean configuration logs nothing', () => {
    const log = memoryLogger();
    make({ channels: [{ id: 1, models: 'gpt-4o', weight: 1 }, { id: 2, models: 'gpt-4o', priority: -1, weight: 3 }] }, log);
    expect(log.lines).toEqual([]);
  });
});

describe('unknownOption', () => {
  test('top-level and nested typos, with "did you mean"', () => {
    const log = memoryLogger();
    make({ retyr: { times: 1 }, retry: { tiems: 1 }, health: { cooldown: { duration: 5 } }, validate: { memoryStoreInProd: false } } as Partial<DistributorOptions>, log);
    expect(codes(log)).toEqual(Array(4).fill(['warn', 'WRN_DIST_UNKNOWN_OPTION']));
    const text = messages(log, 'WRN_DIST_UNKNOWN_OPTION').join('\n');
    expect(text).toContain('unknown option "retyr"; did you mean "retry"?');
    expect(text).toContain('unknown option "retry.tiems"; did you mean "retry.times"?');
    expect(text).toContain('"health.cooldown.duration"; did you mean "health.cooldown.durationMs"?');
    expect(text).toContain('"validate.memoryStoreInProd"; did you mean "validate.memoryStoreInProduction"?');
  });

  test('an affinity rule field typo is reported with the rule index', () => {
    const log = memoryLogger();
    make({ affinity: { rules: [{ name: 'r', modelRegex: ['^gpt-'], keySources: [{ type: 'header', key: 'x-s' }], ttlSecond: 5 } as never] }, validate: { ruleNeverMatches: false } }, log);
    expect(messages(log, 'WRN_DIST_UNKNOWN_OPTION')).toEqual(['WRN_DIST_UNKNOWN_OPTION: unknown option "affinity.rules[0].ttlSecond"; did you mean "affinity.rules[0].ttlSeconds"?']);
  });

  test('no suggestion when nothing is close', () => {
    const log = memoryLogger();
    make({ zzzzzzzzzzzz: 1 } as Partial<DistributorOptions>, log);
    expect(messages(log, 'WRN_DIST_UNKNOWN_OPTION')).toEqual(['WRN_DIST_UNKNOWN_OPTION: unknown option "zzzzzzzzzzzz"']);
  });

  test('runs once per process and option name; another name still warns', () => {
    const a = memoryLogger();
    const b = memoryLogger();
    make({ retyr: {} } as Partial<DistributorOptions>, a);
    make({ retyr: {} } as Partial<DistributorOptions>, b);
    expect(codes(a)).toHaveLength(1);
    expect(codes(b)).toEqual([]);
    make({ trcaeHeader: true } as Partial<DistributorOptions>, b);
    expect(messages(b, 'WRN_DIST_UNKNOWN_OPTION')).toEqual(['WRN_DIST_UNKNOWN_OPTION: unknown option "trcaeHeader"; did you mean "traceHeader"?']);
  });
});

describe('switching off', () => {
  test('validate: { name: false } switches off that check only', () => {
    process.env.NODE_ENV = 'production';
    const log = memoryLogger();
    make({ retyr: {}, validate: { unknownOption: false } } as Partial<DistributorOptions>, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_MEMORY_STORE_IN_PRODUCTION']]);
  });

  test('validate: false switches every check off', () => {
    process.env.NODE_ENV = 'production';
    process.env.pm_id = '3';
    const log = memoryLogger();
    make({ channels: [], retyr: {}, validate: false } as Partial<DistributorOptions>, log);
    expect(log.lines).toEqual([]);
  });

  test('a switched-off check does not use up its once-only slot', () => {
    const a = memoryLogger();
    make({ retyr: {}, validate: { unknownOption: false } } as Partial<DistributorOptions>, a);
    const b = memoryLogger();
    make({ retyr: {} } as Partial<DistributorOptions>, b);
    expect(codes(a)).toEqual([]);
    expect(codes(b)).toEqual([['warn', 'WRN_DIST_UNKNOWN_OPTION']]);
  });
});

describe('memory store', () => {
  test('under NODE_ENV=production', () => {
    process.env.NODE_ENV = 'production';
    const log = memoryLogger();
    make({}, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_MEMORY_STORE_IN_PRODUCTION']]);
  });

  test('a store that is not in-process is fine in production', () => {
    process.env.NODE_ENV = 'production';
    const log = memoryLogger();
    const shared = Object.assign(new MemoryStore(), { localKeys: false });
    make({ store: shared }, log);
    expect(log.lines).toEqual([]);
    shared.shutdown();
  });

  test.each([
    ['PM2 (pm_id)', () => { process.env.pm_id = '0'; }],
    ['PM2 (NODE_APP_INSTANCE)', () => { process.env.NODE_APP_INSTANCE = '1'; }],
    ['a node:cluster worker', () => { jest.replaceProperty(cluster, 'isWorker', true); }],
  ])('in a cluster: %s', (_name, setup) => {
    const log = memoryLogger();
    setup();
    make({}, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_MEMORY_STORE_IN_CLUSTER']]);
  });

  test('a single process is not a cluster', () => {
    delete process.env.pm_id;
    delete process.env.NODE_APP_INSTANCE;
    const log = memoryLogger();
    make({}, log);
    expect(codes(log)).toEqual([]);
  });
});

describe('sharedStore', () => {
  const chans = () => [{ id: 1, name: 'openai', models: 'gpt-4o', key: 'sk-a' }, { id: 2, name: 'azure', models: 'gpt-4o', key: 'sk-b' }];

  test('two distributors on one store with the same channels: fine (shared pins are the point)', () => {
    const store = new MemoryStore();
    const log = memoryLogger();
    const registry = new ChannelRegistry(chans());
    make({ channels: registry, store }, log);
    make({ channels: registry, store }, log);
    make({ channels: chans(), store }, log);
    expect(log.lines).toEqual([]);
    store.shutdown();
  });

  test('the same channel id naming different channels: warned, with the ids and no key', () => {
    const store = new MemoryStore({ prefix: 'gw:' });
    const log = memoryLogger();
    make({ channels: chans(), store }, log);
    make({ channels: [{ id: 2, name: 'other', models: 'claude-3', key: 'sk-secret-z' }, { id: 9, models: 'x' }], store }, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_STORE_SHARED']]);
    const [msg] = messages(log, 'WRN_DIST_STORE_SHARED');
    expect(msg).toContain('channel ids 2 name different channels');
    expect(msg).toContain('prefix "gw:"');
    expect(log.text()).not.toContain('sk-');
    store.shutdown();
  });

  test('a distributor that shut down no longer counts as a user of the store', async () => {
    const store = new MemoryStore();
    const log = memoryLogger();
    const first = make({ channels: chans(), store }, log);
    await first.shutdown();
    make({ channels: [{ id: 1, name: 'different', models: 'gpt-4o' }], store }, log);
    expect(log.lines).toEqual([]);
    store.shutdown();
  });
});

describe('affinityTtlBelowCooldown', () => {
  const rule = (name: string, ttlSeconds: number) => ({ name, modelRegex: ['^gpt-'], keySources: [{ type: 'header' as const, key: 'x-s' }], ttlSeconds });

  test('a rule whose TTL is shorter than the cooldown', () => {
    const log = memoryLogger();
    make({ affinity: { rules: [rule('short', 10), rule('long', 120)] }, health: { cooldown: { durationMs: 30_000 } } }, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_TTL_BELOW_COOLDOWN']]);
    expect(messages(log, 'WRN_DIST_TTL_BELOW_COOLDOWN')[0]).toContain('affinity rule "short" keeps pins for 10000 ms, less than the 30000 ms cooldown');
  });

  test('no cooldown configured: nothing to compare', () => {
    const log = memoryLogger();
    make({ affinity: { rules: [rule('short', 10)] } }, log);
    expect(codes(log)).toEqual([]);
  });
});

describe('zeroWeightTier', () => {
  test('a tier of weight-0 channels next to a weighted tier', () => {
    const log = memoryLogger();
    make({
      channels: [
        { id: 1, models: 'gpt-4o', priority: 10 }, { id: 2, models: 'gpt-4o', priority: 10 },
        { id: 3, models: 'gpt-4o', priority: 0, weight: 5 },
        { id: 4, models: 'other', weight: 0 },
      ],
    }, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_ZERO_WEIGHT_TIER']]);
    expect(messages(log, 'WRN_DIST_ZERO_WEIGHT_TIER')[0]).toContain('default/gpt-4o (priority 10)');
    expect(messages(log, 'WRN_DIST_ZERO_WEIGHT_TIER')[0]).not.toContain('other');
  });

  test('all tiers at weight 0, or all weighted: fine', () => {
    const log = memoryLogger();
    make({ channels: [{ id: 1, models: 'a', priority: 1 }, { id: 2, models: 'a' }, { id: 3, models: 'b', weight: 1, priority: 1 }, { id: 4, models: 'b', weight: 2 }] }, log);
    expect(log.lines).toEqual([]);
  });

  test('re-checked when the registry changes at runtime', () => {
    const log = memoryLogger();
    const registry = new ChannelRegistry([{ id: 1, models: 'gpt-4o', weight: 3 }]);
    make({ channels: registry }, log);
    expect(log.lines).toEqual([]);
    registry.upsert({ id: 2, models: 'gpt-4o', priority: 5 });
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_ZERO_WEIGHT_TIER']]);
  });
});

describe('ruleNeverMatches and emptyChannels', () => {
  test('a rule without model patterns or key sources', () => {
    const log = memoryLogger();
    make({ affinity: { rules: [{ name: 'empty', modelRegex: [], keySources: [{ type: 'header', key: 'x' }] }, { name: 'nokey', modelRegex: ['.'], keySources: [] }] } }, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_RULE_NEVER_MATCHES'], ['warn', 'WRN_DIST_RULE_NEVER_MATCHES']]);
    expect(messages(log, 'WRN_DIST_RULE_NEVER_MATCHES').join('\n')).toMatch(/"empty" can never match[\s\S]*"nokey" can never match/);
  });

  test('a user rule that matches none of the registered models', () => {
    const log = memoryLogger();
    make({ affinity: { rules: [{ name: 'claude only', modelRegex: ['^claude-'], keySources: [{ type: 'header', key: 'x' }] }] } }, log);
    expect(messages(log, 'WRN_DIST_RULE_NEVER_MATCHES')).toEqual(['WRN_DIST_RULE_NEVER_MATCHES: affinity rule "claude only" matches none of the 1 registered models']);
  });

  test('the default rules are not reported for a gateway without their models', () => {
    const log = memoryLogger();
    make({ channels: [{ id: 1, models: 'gemini-pro' }] }, log);
    expect(log.lines).toEqual([]);
  });

  test('an empty channel list', () => {
    const log = memoryLogger();
    make({ channels: [] }, log);
    expect(codes(log)).toEqual([['warn', 'WRN_DIST_NO_CHANNELS']]);
  });
});

describe('creationStack', () => {
  test('created inside a request handler: ERR code at error level, and the request is still served', async () => {
    const log = memoryLogger();
    const app = express();
    app.use((req, res, next) => {
      const mw = make({}, log);
      mw(req, res, next);
    });
    app.use((_req, res) => {
      res.json({ id: res.locals.channel?.id ?? null });
    });
    const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body).toEqual({ id: 1 });
    await request(app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(codes(log)).toEqual([['error', 'ERR_DIST_CREATED_IN_REQUEST_HANDLER']]);
  });

  test('created at startup: no warning', () => {
    const log = memoryLogger();
    make({}, log);
    expect(codes(log)).toEqual([]);
  });
});

describe('never breaks', () => {
  test('a logger that throws on every call breaks neither the factory nor a request', async () => {
    process.env.NODE_ENV = 'production';
    const boom = () => {
      throw new Error('logger down');
    };
    const logger: Logger = { warn: boom, error: boom };
    const mw = make({ channels: [{ id: 1, models: 'gpt-4o' }], retyr: {} } as Partial<DistributorOptions>, logger);
    const app = express();
    app.use(mw);
    app.use((_req, res) => {
      res.json({ id: res.locals.channel?.id ?? null });
    });
    const r = await request(app).post('/').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body).toEqual({ id: 1 });
  });
});

describe('documentation', () => {
  test('README documents every code', () => {
    const readme = readFileSync(path.join(__dirname, '..', 'README.md'), 'utf8');
    const missing = Object.values(VALIDATION_CODES).filter((c) => !readme.includes(c));
    expect(missing).toEqual([]);
  });
});

describe('unsafeRegex', () => {
  const rule = (modelRegex: string[], valueRegex?: string) => ({
    name: 'r', modelRegex, keySources: [{ type: 'header' as const, key: 'x-s' }], ...(valueRegex ? { valueRegex } : {}),
  });
  test('nested quantifiers in a model or value pattern warn once, naming the rule and pattern', () => {
    const log = memoryLogger();
    make({ channels: [{ id: 1, models: 'gpt-4o' }], affinity: { rules: [rule(['^gpt-.*$'], '^(a+)+$')] } }, log);
    expect(codes(log as MemLogger)).toContainEqual(['warn', 'WRN_DIST_UNSAFE_REGEX']);
    expect(messages(log as MemLogger, 'WRN_DIST_UNSAFE_REGEX').join('\n')).toContain('"r"');
    expect(messages(log as MemLogger, 'WRN_DIST_UNSAFE_REGEX').join('\n')).toContain('(a+)+');
  });
  test('ordinary patterns, including the default rules, do not warn', () => {
    const log = memoryLogger();
    make({ channels: [{ id: 1, models: 'gpt-4o' }], affinity: { rules: [rule(['^gpt-.*$', '^(sess-)+\\d+$'])] } }, log);
    make({ channels: [{ id: 1, models: 'gpt-4o' }] }, log);
    expect(codes(log as MemLogger).filter(([, c]) => c === 'WRN_DIST_UNSAFE_REGEX')).toEqual([]);
  });
  test('can be switched off by name', () => {
    const log = memoryLogger();
    make({ channels: [{ id: 1, models: 'gpt-4o' }], affinity: { rules: [rule(['^(\\w+\\s?)*$'])] }, validate: { unsafeRegex: false } }, log);
    expect(codes(log as MemLogger).filter(([, c]) => c === 'WRN_DIST_UNSAFE_REGEX')).toEqual([]);
  });
});
