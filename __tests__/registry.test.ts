// ChannelRegistry and multi-key channels (docs/channels-and-selection.md), plus new-api's gizmo
// model-name normalisation. Adaptation: groups and models are trimmed, unlike new-api's router,
// which splits on ',' without trimming.
import { describe, expect, test } from '@jest/globals';
import type { Request, Response } from 'express';
import request from 'supertest';
import { ChannelRegistry, ChannelStatus, DistributorError, distributor, type ChannelInput } from '../lib';
import { memoryLogger, type TestApp, trackedApps } from './helpers/create-app';

const app = trackedApps();

function invalidChannel(fn: () => unknown): DistributorError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(DistributorError);
    expect((e as DistributorError).code).toBe('ERR_DIST_INVALID_CHANNEL');
    return e as DistributorError;
  }
  throw new Error('expected ERR_DIST_INVALID_CHANNEL, nothing was thrown');
}

const chat = (a: TestApp['app'], model = 'gpt-4o') => request(a).post('/v1/chat/completions').send({ model });

describe('validation: ERR_DIST_INVALID_CHANNEL naming the channel', () => {
  test.each<[string, ChannelInput, RegExp]>([
    ['id 0', { id: 0, name: 'zero', models: 'm' }, /channel 0 \(zero\).*id/],
    ['negative id', { id: -3, name: 'neg', models: 'm' }, /channel -3 \(neg\).*id/],
    ['fractional id', { id: 1.5, name: 'frac', models: 'm' }, /channel 1\.5 \(frac\).*id/],
    ['string id', { id: '4' as unknown as number, name: 'str', models: 'm' }, /channel 4 \(str\).*id/],
    ['negative weight', { id: 5, name: 'heavy', models: 'm', weight: -1 }, /channel 5 \(heavy\).*weight/],
    ['empty models string', { id: 6, name: 'none', models: '' }, /channel 6 \(none\).*models/],
    ['empty models array', { id: 7, name: 'none7', models: [] }, /channel 7 \(none7\).*models/],
    ['only separators', { id: 8, name: 'commas', models: ' , ,' }, /channel 8 \(commas\).*models/],
    ['missing models', { id: 9, name: 'nomodels' } as ChannelInput, /channel 9 \(nomodels\).*models/],
    ['bad status', { id: 10, name: 'st', models: 'm', status: 7 as ChannelStatus }, /channel 10 \(st\).*status/],
  ])('%s', (_label, input, message) => {
    const err = invalidChannel(() => new ChannelRegistry([{ id: 100, models: 'ok' }, input]));
    expect(err.message).toMatch(message);
  });

  test('duplicate id names the channel', () => {
    const err = invalidChannel(() => new ChannelRegistry([{ id: 3, name: 'a', models: 'm' }, { id: 3, name: 'b', models: 'm' }]));
    expect(err.message).toMatch(/channel 3 \(b\).*duplicate/);
  });

  test('distributor({ channels }) validates a plain array the same way', () => {
    const err = invalidChannel(() => distributor({ channels: [{ id: 1, name: 'w', models: 'm', weight: -5 }], logger: memoryLogger() }));
    expect(err.message).toMatch(/channel 1 \(w\)/);
  });

  test('a valid list passes and weight 0 / priority negative are fine', () => {
    const r = new ChannelRegistry([{ id: 1, models: 'm', weight: 0, priority: -2 }]);
    expect(r.get(1)).toMatchObject({ id: 1, weight: 0, priority: -2, status: ChannelStatus.Enabled, groups: ['default'] });
  });
});

describe('comma-separated groups and models are trimmed (new-api does not trim)', () => {
  test('string lists', async () => {
    const channels: ChannelInput[] = [{ id: 1, group: ' default , vip ', models: ' gpt-4o , gpt-4o-mini ' }];
    const reg = new ChannelRegistry(channels);
    expect(reg.get(1)?.groups).toEqual(['default', 'vip']);
    expect(reg.get(1)?.models).toEqual(['gpt-4o', 'gpt-4o-mini']);
    const { app: a } = app({ channels: reg });
    const r = await request(a).post('/v1/chat/completions').set('x-test-context', JSON.stringify({ group: 'vip' })).send({ model: 'gpt-4o-mini' }).expect(200);
    expect(r.body.channel.id).toBe(1);
    expect(r.body.channel.groups).toEqual(['default', 'vip']);
    expect(r.body.channel.models).toEqual(['gpt-4o', 'gpt-4o-mini']);
  });

  test('array lists', () => {
    const reg = new ChannelRegistry([{ id: 1, group: [' g1', 'g2 '], models: [' a ', 'b'] }]);
    expect(reg.get(1)?.groups).toEqual(['g1', 'g2']);
    expect(reg.get(1)?.models).toEqual(['a', 'b']);
  });
});

describe('status', () => {
  test('status 2 and 3 are never selected; default status is 1', async () => {
    const { app: a } = app({
      channels: [
        { id: 1, models: 'gpt-4o', priority: 10, status: ChannelStatus.ManuallyDisabled },
        { id: 2, models: 'gpt-4o', priority: 9, status: ChannelStatus.AutoDisabled },
        { id: 3, models: 'gpt-4o', priority: 1 },
      ],
    });
    for (let i = 0; i < 5; i++) expect((await chat(a).expect(200)).body.channel.id).toBe(3);
  });
});

describe('hot changes take effect on the next request, without a restart', () => {
  test('upsert / setStatus / remove / replaceAll on the registry passed in', async () => {
    const reg = new ChannelRegistry([{ id: 1, models: 'gpt-4o', priority: 1 }]);
    const { app: a, mw } = app({ channels: reg });
    expect(mw.registry).toBe(reg);
    expect((await chat(a).expect(200)).body.channel.id).toBe(1);

    reg.upsert({ id: 2, models: 'gpt-4o', priority: 5 });
    expect((await chat(a).expect(200)).body.channel.id).toBe(2);

    reg.setStatus(2, ChannelStatus.ManuallyDisabled);
    expect((await chat(a).expect(200)).body.channel.id).toBe(1);

    reg.setStatus(2, ChannelStatus.Enabled);
    expect((await chat(a).expect(200)).body.channel.id).toBe(2);

    reg.upsert({ id: 2, models: 'gpt-4o-mini', priority: 5 });
    expect((await chat(a).expect(200)).body.channel.id).toBe(1);
    expect((await chat(a, 'gpt-4o-mini').expect(200)).body.channel.id).toBe(2);

    expect(reg.remove(1)).toBe(true);
    expect(reg.remove(1)).toBe(false);
    await chat(a).expect(503);

    reg.replaceAll([{ id: 9, models: 'gpt-4o', name: 'fresh' }]);
    const r = await chat(a).expect(200);
    expect(r.body.channel).toMatchObject({ id: 9, name: 'fresh' });
    expect(reg.list().map((c) => c.id)).toEqual([9]);
    await chat(a, 'gpt-4o-mini').expect(503);
  });

  test('handler.registry wraps a plain array and accepts changes too', async () => {
    const { app: a, mw } = app({ channels: [{ id: 1, models: 'gpt-4o' }] });
    mw.registry.upsert({ id: 2, models: 'new-model' });
    expect((await chat(a, 'new-model').expect(200)).body.channel.id).toBe(2);
  });

  test('an invalid upsert or replaceAll throws and changes nothing', async () => {
    const reg = new ChannelRegistry([{ id: 1, models: 'gpt-4o' }]);
    const { app: a } = app({ channels: reg });
    invalidChannel(() => reg.upsert({ id: 1, models: '' }));
    invalidChannel(() => reg.replaceAll([{ id: 5, models: 'gpt-4o' }, { id: 5, models: 'gpt-4o' }]));
    expect(reg.list().map((c) => c.id)).toEqual([1]);
    expect((await chat(a).expect(200)).body.channel.id).toBe(1);
  });

  test('setStatus on an unknown channel returns false', () => {
    expect(new ChannelRegistry([]).setStatus(42, ChannelStatus.Enabled)).toBe(false);
  });
});

describe('res.locals.channel', () => {
  test('extra fields are passed through; groups/models are arrays; key is the chosen key', async () => {
    const { app: a } = app({
      channels: [{ id: 1, name: 'eu', models: 'gpt-4o', key: 'sk-k1-xxxxxxxx', baseUrl: 'https://eu.example', region: 'eu', tags: ['x', 'y'], cost: { in: 1 } }],
    });
    const r = await chat(a).expect(200);
    expect(r.body.channel).toMatchObject({
      id: 1, name: 'eu', groups: ['default'], models: ['gpt-4o'], key: 'sk-k1-xxxxxxxx', keyIndex: 0,
      baseUrl: 'https://eu.example', region: 'eu', tags: ['x', 'y'], cost: { in: 1 }, priority: 0, weight: 0, status: 1,
    });
  });

  test('is frozen (read-only), including its arrays', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', key: 'sk-k1-xxxxxxxx', extra: 1 }] }, {
      handler: (_req: Request, res: Response) => {
        const ch = res.locals.channel as unknown as Record<string, unknown>;
        let threw = false;
        try {
          ch.key = 'changed'; // test files compile to strict mode: assigning to a frozen object throws
        } catch {
          threw = true;
        }
        res.json({ frozen: Object.isFrozen(ch), groupsFrozen: Object.isFrozen(ch.groups), threw, key: ch.key });
      },
    });
    const r = await chat(a).expect(200);
    expect(r.body).toEqual({ frozen: true, groupsFrozen: true, threw: true, key: 'sk-k1-xxxxxxxx' });
  });
});

describe('multi-key channels', () => {
  test("random mode follows options.random ('k1' for 0.5 of three keys)", async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', key: ['k0', 'k1', 'k2'] }], random: () => 0.5 });
    const r = await chat(a).expect(200);
    expect(r.body.channel).toMatchObject({ key: 'k1', keyIndex: 1 });
  });

  test('random mode never picks a disabled key', async () => {
    let x = 0;
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', key: ['k0', 'k1', 'k2'], disabledKeys: [1] }], random: () => (x = (x + 0.37) % 1) });
    const seen = new Set<string>();
    for (let i = 0; i < 20; i++) seen.add((await chat(a).expect(200)).body.channel.key);
    expect([...seen].sort()).toEqual(['k0', 'k2']);
  });

  test('polling mode walks the keys in order and skips disabled ones', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', key: ['k0', 'k1', 'k2'], multiKeyMode: 'polling' }] });
    const keys: string[] = [];
    for (let i = 0; i < 4; i++) keys.push((await chat(a).expect(200)).body.channel.key);
    expect(keys).toEqual(['k0', 'k1', 'k2', 'k0']);
    const { app: b } = app({ channels: [{ id: 1, models: 'gpt-4o', key: ['k0', 'k1', 'k2'], multiKeyMode: 'polling', disabledKeys: [1] }] });
    const keys2: string[] = [];
    for (let i = 0; i < 4; i++) keys2.push((await chat(b).expect(200)).body.channel.key);
    expect(keys2).toEqual(['k0', 'k2', 'k0', 'k2']);
  });

  test('no key left -> setup failure -> fallback to another channel (listed in tried / attempts)', async () => {
    const { app: a } = app({
      channels: [
        { id: 1, models: 'gpt-4o', priority: 10, key: ['k0', 'k1'], disabledKeys: [0, 1] },
        { id: 2, models: 'gpt-4o', priority: 1, key: 'k-two' },
      ],
    });
    const r = await chat(a).expect(200);
    expect(r.body.channel).toMatchObject({ id: 2, key: 'k-two' });
    expect(r.body.distribution.tried).toEqual([1, 2]);
    expect(r.body.distribution.attempts).toEqual([{ channelId: 1, phase: 'setup', reason: expect.stringContaining('no enabled key') }]);
  });

  test('no key left and nothing else -> 503 model_not_found naming the setup error', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4o', key: ['k0'], disabledKeys: [0] }] });
    const r = await chat(a).expect(503);
    expect(r.body.error.code).toBe('model_not_found');
    expect(r.body.error.message).toContain('no enabled key');
  });
});

describe('S23: gizmo model-name normalisation', () => {
  test('gpt-4-gizmo-abc finds a channel listing gpt-4-gizmo-*; gpt-4o-gizmo-x finds gpt-4o-gizmo-*', async () => {
    const { app: a } = app({ channels: [{ id: 1, models: 'gpt-4-gizmo-*' }, { id: 2, models: 'gpt-4o-gizmo-*' }] });
    const r = await chat(a, 'gpt-4-gizmo-abc').expect(200);
    expect(r.body.channel.id).toBe(1);
    expect(r.body.distribution.model).toBe('gpt-4-gizmo-abc');
    expect((await chat(a, 'gpt-4o-gizmo-x').expect(200)).body.channel.id).toBe(2);
    await chat(a, 'gpt-4-other').expect(503);
  });
});
