// The example gateway (examples/gateway): booted in-process for its curl lines, in env mode
// as the bench harness starts it, and once as a child process the way `npm start` runs it.
import { afterAll, describe, expect, test } from '@jest/globals';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { Agent, request } from 'undici';
import type { NextFunction, Request, Response } from 'express';
import { adminGuard, startGateway, type Gateway } from '../examples/gateway/server';
import { startMockUpstream, type MockUpstream } from '../examples/gateway/mock-upstream';

const client = new Agent({ keepAliveTimeout: 1000 });
const toStop: Array<() => Promise<unknown>> = [];

afterAll(async () => {
  while (toStop.length) await toStop.pop()?.();
  await client.close();
});

/** Runs a printed curl line (the subset used: -s/-si, -H, -d) through undici. */
async function curl(line: string): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  const url = /curl -si? (\S+)/.exec(line)?.[1] as string;
  const headers: Record<string, string> = {};
  for (const m of line.matchAll(/-H '([^:]+): ([^']*)'/g)) headers[m[1]] = m[2];
  const data = /-d '([^']*)'/.exec(line)?.[1];
  const r = await request(url, { method: data ? 'POST' : 'GET', headers, body: data, dispatcher: client });
  return { status: r.statusCode, headers: r.headers, text: await r.body.text() };
}

const who = (text: string) => /Hello from (\w+)/.exec(text)?.[1];

describe('example gateway, channels.json with built-in mocks', () => {
  let gw: Gateway;
  test('boots on a free port with its mocks', async () => {
    gw = await startGateway({ port: 0, env: {} });
    toStop.push(() => gw.close());
    expect(gw.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(Object.keys(gw.mocks).sort()).toEqual(['alpha', 'azure', 'beta', 'claude-a', 'claude-b', 'claude-dead', 'dead', 'embed', 'flaky', 'gemini', 'gemini-dead', 'rescue']);
    expect(gw.curls).toHaveLength(9); // five OpenAI-side lines, then Anthropic, Gemini, embeddings, Azure
    const h = await request(`${gw.url}/healthz`, { dispatcher: client });
    expect(h.statusCode).toBe(200);
    expect(await h.body.json()).toEqual({ status: 'ok' });
  });

  test('curl 1 (plain): a chat completion from a top-tier channel', async () => {
    for (let i = 0; i < 6; i++) {
      const r = await curl(gw.curls[0]);
      expect(r.status).toBe(200);
      const body = JSON.parse(r.text) as { object: string };
      expect(body.object).toBe('chat.completion');
      expect(['alpha', 'beta', 'flaky']).toContain(who(r.text));
    }
  });

  test('curl 2 (sticky session): the same channel answers every time', async () => {
    const first = await curl(gw.curls[1]);
    expect(first.status).toBe(200);
    expect(JSON.parse(first.text)).toMatchObject({ object: 'response', status: 'completed' });
    const served = who(first.text);
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < 4; i++) {
      const r = await curl(gw.curls[1]);
      expect(r.status).toBe(200);
      if (served !== 'flaky') expect(who(r.text)).toBe(served);
      expect(r.headers['x-distributor-trace']).toBeDefined();
    }
  });

  test('curls 4 and 5: the sticky session above shows as affinity hits with cached tokens (affinity report, distributor_tokens_total)', async () => {
    const report = await curl(gw.curls[3]);
    expect(report.status).toBe(200);
    const rule = (JSON.parse(report.text) as Record<string, { lookups: number; hits: number; hitRate: number; onHits: { reports: number; cachedRatio: number | null }; onMisses: { cachedRatio: number | null } }>)['codex cli trace'];
    expect(rule.lookups).toBe(5);
    expect(rule.hits).toBeGreaterThanOrEqual(2);
    expect(rule.hitRate).toBeCloseTo(rule.hits / 5);
    // the mock caches per key and session: a hit reuses the channel (and key) that saw the session
    expect(rule.onHits.cachedRatio).toBeGreaterThan(0.8);
    const metrics = await curl(gw.curls[4]);
    expect(metrics.status).toBe(200);
    const value = (kind: string, affinity: string) => metrics.text.split('\n')
      .filter((l) => l.startsWith('distributor_tokens_total{') && l.includes('rule="codex cli trace"') && l.includes(`kind="${kind}"`) && l.includes(`affinity="${affinity}"`))
      .reduce((n, l) => n + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    expect(value('cached', 'hit') / value('input', 'hit')).toBeGreaterThan(0.8);
    // plain chat completions (curl 1) match no rule
    expect(metrics.text).toMatch(/^distributor_tokens_total\{rule="",channel="\d+",affinity="none",kind="input"\} \d+$/m);
  });

  test('curl 3 (failover): dead -> offline -> rescue, visible in the trace header', async () => {
    const r = await curl(gw.curls[2]);
    expect(r.status).toBe(200);
    expect(who(r.text)).toBe('rescue');
    expect(r.headers['x-distributor-trace']).toBe('select ch=4 -> upstream 500 ch=4 -> retry ch=5 -> upstream error ch=5 -> retry ch=6');
    expect(gw.mocks.dead.stats.hits).toBe(1);
  });

  test('unknown tokens get an OpenAI-shaped 401 that does not echo the token', async () => {
    const r = await curl(gw.curls[0].replace('sk-demo-alice', 'sk-wrong-token-1234'));
    expect(r.status).toBe(401);
    expect(JSON.parse(r.text)).toEqual({ error: { message: 'Invalid API key', type: 'invalid_request_error', code: 'invalid_api_key' } });
  });

  test('streaming works through the gateway', async () => {
    const line = gw.curls[0].replace('"model":"gpt-4o-mini"', '"model":"gpt-4o-mini","stream":true');
    const r = await curl(line);
    expect(r.status).toBe(200);
    expect(r.text.trim().endsWith('data: [DONE]')).toBe(true);
  });

  test('/metrics exposes the distributor metrics after the traffic above', async () => {
    const r = await request(`${gw.url}/metrics`, { dispatcher: client });
    expect(r.statusCode).toBe(200);
    const text = await r.body.text();
    expect(text).toMatch(/^# HELP \w+/m);
    // selections were counted for the requests above, with low-cardinality labels only
    const selections = text.split('\n').filter((l) => /selections?_total\{/.test(l));
    expect(selections.length).toBeGreaterThan(0);
    expect(text).not.toContain('demo-session-1');
    expect(text).not.toContain('sk-demo');
  });
});

describe('example gateway admin router', () => {
  test('ADMIN_TOKEN: /admin/distributor needs it; the printed curl line carries it', async () => {
    const gw = await startGateway({ port: 0, env: { ADMIN_TOKEN: 'adm-test-token' } });
    toStop.push(() => gw.close());
    expect(gw.curls[3]).toContain("-H 'Authorization: Bearer adm-test-token'");
    const no = await request(`${gw.url}/admin/distributor/affinity`, { dispatcher: client });
    expect(no.statusCode).toBe(401);
    await no.body.dump();
    const wrong = await request(`${gw.url}/admin/distributor/affinity`, { headers: { authorization: 'Bearer adm-test-tokeX' }, dispatcher: client });
    expect(wrong.statusCode).toBe(401);
    await wrong.body.dump();
    expect((await curl(gw.curls[3])).status).toBe(200);
    const pins = await request(`${gw.url}/admin/distributor/pins`, { headers: { authorization: 'Bearer adm-test-token' }, dispatcher: client });
    expect(pins.statusCode).toBe(200);
    expect(await pins.body.json()).toEqual({ pins: {}, total: 0 });
  });

  test('without ADMIN_TOKEN only loopback callers pass (the socket address, not X-Forwarded-For)', () => {
    const guard = adminGuard(undefined);
    const call = (remoteAddress: string, headers: Record<string, string> = {}) => {
      let status = 0;
      let passed = false;
      const res = { status: (s: number) => ((status = s), res), json: () => res } as unknown as Response;
      guard({ socket: { remoteAddress }, headers } as unknown as Request, res, (() => (passed = true)) as NextFunction);
      return passed ? 'next' : status;
    };
    expect(call('127.0.0.1')).toBe('next');
    expect(call('::1')).toBe('next');
    expect(call('::ffff:127.0.0.1')).toBe('next');
    expect(call('10.0.0.5')).toBe(403);
    expect(call('10.0.0.5', { 'x-forwarded-for': '127.0.0.1' })).toBe(403);
  });
});

describe('example gateway, env channels (as the bench harness starts it)', () => {
  test('CHANNELS spread evenly; x-bench-route: fallback goes dead -> next', async () => {
    const names = ['ch1', 'ch2', 'ch3'];
    const mocks: MockUpstream[] = await Promise.all(names.map((name) => startMockUpstream({ name })));
    const dead = await startMockUpstream({ name: 'dead', failRate: 1, failStatus: 500 });
    toStop.push(() => Promise.all([...mocks, dead].map((m) => m.close())));
    const gw = await startGateway({
      port: 0,
      env: { CHANNELS: mocks.map((m) => m.url).join(','), FALLBACK_CHANNELS: [dead.url, mocks[1].url].join(',') },
    });
    toStop.push(() => gw.close());
    const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], max_tokens: 16 });
    const headers = { 'content-type': 'application/json', authorization: 'Bearer sk-client' };
    for (let i = 0; i < 30; i++) {
      const r = await request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers, body, dispatcher: client });
      expect(r.statusCode).toBe(200);
      expect(r.headers['x-distributor-trace']).toBeUndefined();
      await r.body.dump();
    }
    for (const m of mocks) expect(m.stats.hits).toBeGreaterThan(0);
    expect(mocks.reduce((n, m) => n + m.stats.hits, 0)).toBe(30);
    for (const m of mocks) m.reset();
    for (let i = 0; i < 5; i++) {
      const r = await request(`${gw.url}/v1/chat/completions`, { method: 'POST', headers: { ...headers, 'x-bench-route': 'fallback' }, body, dispatcher: client });
      expect(r.statusCode).toBe(200);
      expect(who(await r.body.text())).toBe('ch2');
    }
    expect(dead.stats.hits).toBe(5);
    expect(mocks[1].stats.hits).toBe(5);
  });
});

describe('npm start (child process)', () => {
  test('prints the URL and nine curl lines (one per protocol among them), serves them, and exits cleanly on SIGTERM', async () => {
    const root = path.join(__dirname, '..');
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'examples', 'gateway', 'server.ts')], {
      cwd: root,
      env: { ...process.env, PORT: '0', CHANNELS: '', FALLBACK_CHANNELS: '', ADMIN_TOKEN: '', NODE_ENV: 'development' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 40_000;
      while (!/distributor_tokens_total/.test(out) && Date.now() < deadline && child.exitCode === null) await new Promise((r) => setTimeout(r, 100));
      const url = /listening on (http:\/\/127\.0\.0\.1:\d+)/.exec(out)?.[1];
      expect(url).toBeDefined();
      const curls = out.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('curl '));
      expect(curls).toHaveLength(9);
      expect(curls[5]).toContain('/v1/messages');
      expect(curls[6]).toContain(':generateContent');
      expect(curls[7]).toContain('/v1/embeddings');
      expect(curls[1]).toContain('prompt_cache_key');
      expect(curls[2]).toContain('sk-demo-failover');
      expect(curls[3]).toContain('/admin/distributor/affinity');
      expect(curls[4]).toContain('/metrics');
      for (const line of curls) expect((await curl(line)).status).toBe(200);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  }, 60_000);
});
