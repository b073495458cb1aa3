// channelsFromNewApi() and the native protocols (API.md 11.5): the reference's type numbers,
// `model_mapping` (its JSON string), an Azure row's api version in `other`, and the once-per-process
// warnings for what cannot be imported (never a failed import, never a key in a log line).
import { afterEach, describe, expect, jest, test } from '@jest/globals';
import winston from 'winston';
import { ChannelRegistry, channelsFromNewApi, type NewApiChannelRow } from '../lib';
import { VALIDATION_CODES } from '../lib/entry/logging';
import { resetValidations } from '../lib/validations';
import { memoryLogger } from './helpers/create-app';

afterEach(() => {
  resetValidations();
  jest.restoreAllMocks();
});

const row = (id: number, extra: Partial<NewApiChannelRow> = {}): NewApiChannelRow => ({
  id, name: `r${id}`, key: `sk-row-secret-${id}`, status: 1, group: 'default', models: 'gpt-4o', ...extra,
});

describe('type numbers', () => {
  test('1 / 3 / 14 / 24 become openai / azure / anthropic / gemini; no type stays the default', () => {
    const log = memoryLogger();
    const out = channelsFromNewApi([row(1, { type: 1 }), row(2, { type: 3 }), row(3, { type: 14 }), row(4, { type: 24 }), row(5)], { logger: log });
    expect(out.map((c) => c.type)).toEqual(['openai', 'azure', 'anthropic', 'gemini', undefined]);
    expect(log.lines).toEqual([]);
    expect(new ChannelRegistry(out).list().map((c) => c.type)).toEqual(['openai', 'azure', 'anthropic', 'gemini', 'openai']);
  });

  test('another number imports as openai and warns WRN_DIST_CHANNEL_TYPE once per type number and process', () => {
    const log = memoryLogger();
    const out = channelsFromNewApi([row(1, { type: 41 }), row(2, { type: 41 }), row(3, { type: 33 })], { logger: log });
    expect(out.map((c) => c.type)).toEqual(['openai', 'openai', 'openai']);
    channelsFromNewApi([row(4, { type: 41 })], { logger: log }); // a second import: no new line
    expect(log.lines.map((l) => [l.level, (l.meta as { code: string }).code])).toEqual([
      ['warn', 'WRN_DIST_CHANNEL_TYPE'], ['warn', 'WRN_DIST_CHANNEL_TYPE'],
    ]);
    expect(log.lines[0].message).toMatch(/^WRN_DIST_CHANNEL_TYPE: new-api channel type 41 /);
    expect(log.lines[1].message).toContain('type 33');
    expect(log.text()).not.toContain('sk-row-secret');
    expect(VALIDATION_CODES.channelType).toBe('WRN_DIST_CHANNEL_TYPE');
  });

  test('without a logger the warning goes to the default logger (winston, console transport), still once', () => {
    const seen: string[] = [];
    jest.spyOn(winston.transports.Console.prototype, 'log').mockImplementation(function (this: unknown, info: unknown, next: () => void) {
      seen.push(String((info as { message?: unknown }).message));
      next();
    } as never);
    channelsFromNewApi([row(1, { type: 99 }), row(2, { type: 99 })]);
    expect(seen.filter((m) => m.startsWith('WRN_DIST_CHANNEL_TYPE: new-api channel type 99 '))).toHaveLength(1);
  });
});

describe('model_mapping and other', () => {
  test('model_mapping (the reference\'s JSON string) becomes modelMapping; empty ones are dropped quietly', () => {
    const log = memoryLogger();
    const out = channelsFromNewApi([
      row(1, { type: 1, model_mapping: '{"gpt-4o":"gpt-4o-2024-11-20"}' }), row(2, { model_mapping: '' }), row(3, { model_mapping: '{}' }), row(4, { model_mapping: null }),
    ], { logger: log });
    expect(out[0].modelMapping).toEqual({ 'gpt-4o': 'gpt-4o-2024-11-20' });
    expect(out.slice(1).map((c) => c.modelMapping)).toEqual([undefined, undefined, undefined]);
    expect(log.lines).toEqual([]);
    expect(new ChannelRegistry(out).get(1)?.modelMapping).toEqual({ 'gpt-4o': 'gpt-4o-2024-11-20' });
  });

  test('invalid model_mapping JSON (or shape) warns WRN_DIST_CHANNEL_FIELD once per channel and is dropped; the import goes on', () => {
    const log = memoryLogger();
    const rows = [row(1, { model_mapping: '{"gpt-4o": ' }), row(2, { model_mapping: '["a"]' }), row(3, { model_mapping: '{"a":1}' }), row(4, { model_mapping: '{"a":"b"}' })];
    const out = channelsFromNewApi(rows, { logger: log });
    channelsFromNewApi(rows, { logger: log });
    expect(out.map((c) => c.modelMapping)).toEqual([undefined, undefined, undefined, { a: 'b' }]);
    expect(log.lines.map((l) => (l.meta as { code: string }).code)).toEqual(['WRN_DIST_CHANNEL_FIELD', 'WRN_DIST_CHANNEL_FIELD', 'WRN_DIST_CHANNEL_FIELD']);
    expect(log.lines[0].message).toContain('channel 1: model_mapping dropped');
    expect(() => new ChannelRegistry(out)).not.toThrow();
  });

  test('an Azure row\'s other is its apiVersion; an unusable one is dropped with a warning; other types ignore other', () => {
    const log = memoryLogger();
    const out = channelsFromNewApi([
      row(1, { type: 3, other: '2025-01-01-preview' }), row(2, { type: 3, other: '' }), row(3, { type: 3, other: 'not a version; drop table' }), row(4, { type: 24, other: 'v1beta' }),
    ], { logger: log });
    expect(out.map((c) => c.apiVersion)).toEqual(['2025-01-01-preview', undefined, undefined, undefined]);
    expect(log.lines.map((l) => l.message)).toEqual([expect.stringMatching(/^WRN_DIST_CHANNEL_FIELD: new-api channel 3: other/)]);
    expect(new ChannelRegistry(out).get(1)?.apiVersion).toBe('2025-01-01-preview');
  });
});
