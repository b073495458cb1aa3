// Moving from new-api: channel rows and channel_affinity_setting JSON pasted unchanged.
import { afterAll, describe, expect, test } from '@jest/globals';
import request from 'supertest';
import { affinityFromNewApi, channelsFromNewApi, ChannelStatus, type NewApiChannelRow } from '../lib';
import { createApp, ctx } from './helpers/create-app';

// Rows as new-api's admin API returns them (trimmed to the routing fields plus a few extras).
const rows: NewApiChannelRow[] = [
  { id: 1, type: 1, name: 'primary', key: 'sk-row-one', status: 1, weight: 0, priority: 10, group: 'default,vip', models: 'gpt-5,gpt-4o', base_url: 'http://127.0.0.1:1', auto_ban: 1, tag: 'openai', model_mapping: '{}' },
  { id: 2, type: 1, name: 'multi', key: 'sk-k0\nsk-k1\nsk-k2', status: 1, weight: 5, priority: 10, group: 'default', models: 'gpt-5', base_url: null, auto_ban: 0,
    channel_info: { is_multi_key: true, multi_key_mode: 'polling', multi_key_status_list: { '0': 2 } } },
  { id: 3, type: 1, name: 'off', key: 'sk-off', status: 2, priority: 0, group: 'default', models: 'gpt-5' },
];

// new-api's channel_affinity_setting, exactly as stored in its options table.
const setting = `{"enabled":true,"switch_on_success":true,"keep_on_channel_disabled":false,"max_entries":100000,"default_ttl_seconds":3600,
"rules":[{"name":"codex cli trace","model_regex":["^gpt-.*$"],"path_regex":["/v1/responses"],"key_sources":[{"type":"gjson","path":"prompt_cache_key"}],
"value_regex":"","ttl_seconds":0,"param_override_template":{"operations":[]},"skip_retry_on_failure":true,"include_using_group":true,"include_model_name":false,"include_rule_name":true},
{"name":"claude cli trace","model_regex":["(?i)^claude-.*$"],"path_regex":["/v1/messages"],"key_sources":[{"type":"request_header","key":"X-Claude-Code-Session-Id"},{"type":"gjson","path":"metadata.user_id","nested_path":"session_id"}],
"skip_retry_on_failure":true,"include_using_group":true,"include_rule_name":true}]}`;

describe('channelsFromNewApi', () => {
  const channels = channelsFromNewApi(rows);
  test('maps snake_case rows, multi-key info and auto_ban', () => {
    expect(channels[0]).toMatchObject({ id: 1, baseUrl: 'http://127.0.0.1:1', autoBan: true, group: 'default,vip', tag: 'openai' });
    expect(channels[1]).toMatchObject({ id: 2, key: ['sk-k0', 'sk-k1', 'sk-k2'], multiKeyMode: 'polling', disabledKeys: [0], autoBan: false });
    expect(channels[2].status).toBe(ChannelStatus.ManuallyDisabled);
    expect(channels[1].baseUrl).toBeUndefined();
  });

  const { app, mw } = createApp({ channels, affinity: affinityFromNewApi(setting), random: () => 0.99 });
  afterAll(() => mw.shutdown());

  test('the converted rows route: tier 10 only, the disabled row never, disabled key skipped', async () => {
    const seen = new Map<number, Set<string>>();
    for (let i = 0; i < 12; i++) {
      const r = await request(app).post('/v1/chat/completions').send({ model: 'gpt-5' }).expect(200);
      const id = r.body.channel.id as number;
      if (!seen.has(id)) seen.set(id, new Set());
      seen.get(id)!.add(r.body.channel.key as string);
    }
    expect([...seen.keys()].every((id) => id === 1 || id === 2)).toBe(true);
    expect(seen.get(2)?.has('sk-k0')).toBe(false);
    // polling walks the enabled keys in order
    expect(seen.get(2)).toEqual(new Set(['sk-k1', 'sk-k2']));
  });

  test('extras such as tag and model_mapping reach res.locals.channel', async () => {
    const r = await request(app).post('/v1/chat/completions').set(ctx({ group: 'vip' })).send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.channel).toMatchObject({ id: 1, tag: 'openai', model_mapping: '{}', groups: ['default', 'vip'] });
  });
});

describe('affinityFromNewApi', () => {
  test('imports the setting unchanged, including (?i)', () => {
    const a = affinityFromNewApi(setting);
    expect(a).toMatchObject({ enabled: true, switchOnSuccess: true, keepOnChannelDisabled: false, defaultTtlSeconds: 3600 });
    expect(a.rules?.map((r) => r.name)).toEqual(['codex cli trace', 'claude cli trace']);
    expect(a.rules?.[1].keySources).toEqual([
      { type: 'header', key: 'X-Claude-Code-Session-Id' },
      { type: 'body', path: 'metadata.user_id', nestedPath: 'session_id' },
    ]);
    expect(a.rules?.[0]).toMatchObject({ skipRetryOnFailure: true, includeUsingGroup: true, includeRuleName: true, includeModelName: false });
  });

  test('a sticky codex session stays on one channel with the imported rules', async () => {
    const { app, mw } = createApp({ channels: channelsFromNewApi(rows), affinity: affinityFromNewApi(setting) });
    try {
      const first = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 'sess-1' }).expect(200);
      for (let i = 0; i < 8; i++) {
        const r = await request(app).post('/v1/responses').send({ model: 'gpt-5', prompt_cache_key: 'sess-1' }).expect(200);
        expect(r.body.channel.id).toBe(first.body.channel.id);
        expect(r.body.distribution.affinity).toMatchObject({ rule: 'codex cli trace', hit: true, used: true });
      }
      const claude = await request(app).post('/v1/messages').set('X-Claude-Code-Session-Id', 'c1').send({ model: 'CLAUDE-x' }).expect(503);
      expect(claude.body.error.code).toBe('model_not_found'); // matched case-insensitively, no channel serves it
    } finally {
      await mw.shutdown();
    }
  });

  test('Go-only regex syntax is reported naming the rule and the pattern', () => {
    const bad = '{"rules":[{"name":"weird","model_regex":["(?s)^gpt"],"key_sources":[{"type":"gjson","path":"x"}]}]}';
    expect(() => affinityFromNewApi(bad)).toThrow(/weird.*\(\?s\)\^gpt/);
  });
});

describe('examples/migration (one command)', () => {
  test('runs, keeps the sessions sticky and exits by itself', async () => {
    const { execFile } = await import('node:child_process');
    const path = await import('node:path');
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', path.join(__dirname, '..', 'examples', 'migration', 'run.ts')], { timeout: 30_000 }, (err, stdout) => {
        if (err) reject(err);
        else resolve(stdout);
      });
    });
    expect(out).toContain('"rule":"codex cli trace","hit":true,"used":true');
    expect(out).toContain('"rule":"claude cli trace","hit":true,"used":true');
    expect(out).toMatch(/auto group\s+200 .*"group":"vip"/);
    expect(out).toContain('503');
    expect(out).not.toMatch(/sk-(primary|pool|ant|old)/);
  }, 40_000);
});
