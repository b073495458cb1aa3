// The bad-input corpus (corpus/*.json, made by corpus/generate.ts) against a real listening
// gateway: auth stub -> distributor() -> a fake relay. Every case is checked for its exact status
// and OpenAI error code, for a bounded answer time, and for planted secrets in the answer; after
// the whole corpus: no 500, no error reaching Express, no secret in any log line, no prototype
// change, no request left counted as in flight, and the server still serves.
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import express, { type NextFunction, type Request, type Response } from 'express';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { ChannelStatus, defaultAffinityRules, distributor, type DistributorHandler, type RequestContext } from '../../lib';
import { memoryLogger } from '../helpers/create-app';
import type { CorpusCase, CorpusFile } from './corpus/types';
import { toRawRequest } from './corpus/types';
import {
  CHANNEL_KEYS, TOKEN_A, TOKEN_B, TOKEN_PIN_DISABLED, TOKEN_PIN_UNKNOWN, counters, leakedSecrets, listen, openAiError,
  pollutionProbe, prototypeSnapshot, sendRaw, sleep,
} from './kit';

const CORPUS_DIR = path.join(__dirname, 'corpus');
const corpus: Array<[string, CorpusFile]> = readdirSync(CORPUS_DIR)
  .filter((f) => f.endsWith('.json'))
  .sort()
  .map((f) => [f.replace(/\.json$/, ''), JSON.parse(readFileSync(path.join(CORPUS_DIR, f), 'utf8')) as CorpusFile]);
const TOTAL = corpus.reduce((n, [, f]) => n + f.cases.length, 0);

/** Slowest acceptable answer per case (a regex or parser blow-up shows up as a timeout here). */
const CASE_MS = 2500;

const TOKENS: Record<string, RequestContext> = {
  [TOKEN_A]: { tokenId: 'A', userId: 1, group: 'default', userGroup: 'default' },
  [TOKEN_B]: { tokenId: 'B', userId: 2, group: 'vip', userGroup: 'vip', modelLimits: ['gpt-4o-mini', 'gpt-4o'] },
  [TOKEN_PIN_DISABLED]: { tokenId: 'C', specificChannelId: 4 },
  [TOKEN_PIN_UNKNOWN]: { tokenId: 'D', specificChannelId: 99 },
};

function auth(req: Request, res: Response, next: NextFunction): void {
  const h = req.headers.authorization;
  const token = typeof h === 'string' && /^bearer /i.test(h) ? h.slice(7).trim() : undefined;
  const ctx = token === undefined ? undefined : Object.prototype.hasOwnProperty.call(TOKENS, token) ? TOKENS[token] : undefined;
  if (!ctx) {
    res.status(401).json({ error: { message: token === undefined ? 'Missing bearer token' : 'Invalid API key', type: 'invalid_request_error', code: 'invalid_api_key' } });
    return;
  }
  res.locals.token = ctx;
  next();
}

const logger = memoryLogger();
const reachedExpress: unknown[] = [];
const served: Array<{ channel: number; name: string }> = [];
let mw: DistributorHandler;
let base: Awaited<ReturnType<typeof listen>>;
let protoBefore: Record<string, string[]>;
const statuses = new Map<number, number>();
const timings: number[] = [];

beforeAll(async () => {
  protoBefore = prototypeSnapshot();
  mw = distributor({
    channels: [
      { id: 1, name: 'main-a', models: 'gpt-4o-mini,gpt-4o', group: 'default', priority: 10, weight: 3, key: CHANNEL_KEYS[0] },
      { id: 2, name: 'main-b', models: 'gpt-4o-mini,gpt-4o', group: 'default,vip', priority: 10, weight: 1, key: [CHANNEL_KEYS[1], CHANNEL_KEYS[2]] },
      { id: 3, name: 'media', models: 'whisper-1,tts-1,dall-e,text-moderation-stable,gemini-2.0-flash,gpt-4o-realtime', key: CHANNEL_KEYS[3] },
      { id: 4, name: 'off', models: 'gpt-4o-mini,legacy-model', status: ChannelStatus.ManuallyDisabled, key: CHANNEL_KEYS[4] },
    ],
    logger,
    bodyLimit: '256kb',
    multipart: true,
    allowBodyGroup: true,
    usableGroups: (ug) => (ug === 'vip' ? ['default', 'vip'] : ['default']),
    affinity: {
      rules: [
        ...defaultAffinityRules(),
        {
          name: 'custom rule',
          modelRegex: ['^gpt-'],
          pathRegex: ['/v1/chat/completions'],
          keySources: [
            { type: 'header', key: 'x-session-id' },
            { type: 'query', key: 'session' },
            { type: 'context', key: 'sessionTag' },
            { type: 'body', path: 'metadata.session' },
          ],
          valueRegex: '^\\S{1,2000}$',
          includeUsingGroup: true,
          includeRuleName: true,
        },
        // An unanchored model pattern, as operators write them: user-supplied models are long.
        { name: 'mini models', modelRegex: ['gpt-.*-mini'], pathRegex: ['/v1/completions'], keySources: [{ type: 'header', key: 'x-mini-session' }] },
      ],
    },
    setup: (ch, req) => {
      const f = req.headers['x-fail-setup'];
      if (f === 'all' || f === String(ch.id)) {
        const session = (req.body as { prompt_cache_key?: unknown } | undefined)?.prompt_cache_key;
        throw new Error(`cannot prepare the channel with key ${ch.key} for ${String(req.headers.authorization)} (${String(req.headers['x-api-key'])}), session ${String(session)}`);
      }
    },
  });
  const app = express();
  app.disable('x-powered-by');
  app.set('etag', false);
  app.use(auth);
  app.use(mw);
  app.use((_req: Request, res: Response) => {
    const ch = res.locals.channel!;
    served.push({ channel: ch.id, name: ch.name });
    res.status(200).json({ object: 'relay.ok', channel: ch.id });
  });
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    reachedExpress.push(err);
    res.status(500).json({ error: { message: 'unexpected', type: 'test', code: 'unexpected' } });
  });
  base = await listen(app);
});

afterAll(async () => {
  await base?.close();
  await mw?.shutdown();
});

function check(c: CorpusCase, r: Awaited<ReturnType<typeof sendRaw>>): void {
  statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
  timings.push(r.ms);
  const where = `${c.category} / ${c.name}`;
  expect({ where, status: r.status }).toEqual({ where, status: c.expect.status });
  expect(r.status).not.toBe(500);
  expect(r.ms).toBeLessThan(CASE_MS);
  if (c.expect.layer === 'node') {
    // Node's HTTP parser answers before Express runs: no body, or a connection closed after the status.
    return;
  }
  expect(r.error).toBeUndefined();
  if (c.expect.layer === 'relay') {
    expect(JSON.parse(r.text)).toMatchObject({ object: 'relay.ok' });
  } else {
    const e = openAiError(r.text);
    expect({ where, body: e ? 'openai-shaped' : r.text.slice(0, 200) }).toEqual({ where, body: 'openai-shaped' });
    expect(e!.error.code).toBe(c.expect.code);
    expect(e!.error.type).toBe(c.expect.layer === 'auth' ? 'invalid_request_error' : 'distributor_error');
    expect(r.headers['content-type']).toMatch(/^application\/json/);
  }
  expect(leakedSecrets(r.text + JSON.stringify(r.headers))).toEqual([]);
}

test(`the corpus has at least 200 cases (${TOTAL})`, () => {
  expect(TOTAL).toBeGreaterThanOrEqual(200);
  for (const [, f] of corpus) for (const c of f.cases) expect(c.expect.status).not.toBe(500);
});

for (const [file, f] of corpus) {
  describe(`corpus: ${file} (${f.cases.length})`, () => {
    test.each(f.cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
      const r = await sendRaw(base.url, toRawRequest(c));
      check(c, r);
    });
  });
}

describe('on the wire, beyond what a well-formed request can express', () => {
  /** Writes raw bytes on a fresh connection and returns what came back before the close. */
  function rawSocket(bytes: Buffer[], opts: { endAfter?: boolean; waitMs?: number } = {}): Promise<string> {
    const { port } = new URL(base.url);
    return new Promise((resolve) => {
      const s = net.connect(Number(port), '127.0.0.1');
      const got: Buffer[] = [];
      s.on('data', (d) => got.push(d));
      s.on('error', () => undefined);
      s.on('close', () => resolve(Buffer.concat(got).toString('latin1')));
      s.on('connect', () => {
        for (const b of bytes) s.write(b);
        if (opts.endAfter) s.end();
        setTimeout(() => s.destroy(), opts.waitMs ?? 500);
      });
    });
  }
  const head = (extra: string, length: number | 'chunked') =>
    Buffer.from(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${TOKEN_A}\r\nContent-Type: application/json\r\n${length === 'chunked' ? 'Transfer-Encoding: chunked' : `Content-Length: ${length}`}\r\n${extra}\r\n`, 'latin1');

  test('a body shorter than its Content-Length, then the client half-closes: no answer needed, no crash, nothing left in flight', async () => {
    const out = await rawSocket([head('', 1000), Buffer.from('{"model":"gpt-4o-mini"')], { endAfter: true, waitMs: 400 });
    expect(out).not.toContain(' 500 ');
    await sleep(50);
    expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
  });

  test('a chunked body cut inside a chunk: no crash, nothing left in flight', async () => {
    const out = await rawSocket([head('', 'chunked'), Buffer.from('ff\r\n{"model":"gpt')], { endAfter: true, waitMs: 400 });
    expect(out).not.toContain(' 500 ');
    await sleep(50);
    expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
  });

  test('an invalid chunk size: Node answers 400 before the distributor, nothing crashes', async () => {
    const out = await rawSocket([head('', 'chunked'), Buffer.from('zz\r\n{}\r\n0\r\n\r\n')], { waitMs: 400 });
    expect(out.startsWith('HTTP/1.1 400')).toBe(true);
  });

  test('a request line of garbage bytes: Node answers 400', async () => {
    const out = await rawSocket([Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x0d, 0x0a, 0x0d, 0x0a])], { waitMs: 400 });
    expect(out.startsWith('HTTP/1.1 400')).toBe(true);
  });

  test('a client that goes away in the middle of a large body: nothing left in flight', async () => {
    const out = await rawSocket([head('', 200_000), Buffer.alloc(50_000, 0x61)], { waitMs: 100 });
    expect(out).toBe('');
    await sleep(100);
    expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
  });
});

describe('after the whole corpus', () => {
  test('no 500 anywhere, no error reached Express, nothing left in flight', async () => {
    await sleep(50);
    expect(statuses.get(500) ?? 0).toBe(0);
    expect(reachedExpress).toEqual([]);
    expect(counters(mw)).toEqual({ active: 0, retrying: 0 });
  });

  test('no prototype was changed (no pollution through JSON, form, query, headers or multipart)', () => {
    expect(prototypeSnapshot()).toEqual(protoBefore);
    expect(pollutionProbe()).toEqual({ polluted: undefined, isAdmin: undefined, model: undefined, session_id: undefined, user_id: undefined });
  });

  test('no planted secret in any log line (setup errors carry every secret and were logged)', () => {
    const text = logger.text();
    expect(text).toContain('channel setup failed');
    expect(text).toContain('[REDACTED]');
    expect(leakedSecrets(text)).toEqual([]);
  });

  test('only enabled channels served, and the server still serves a normal request', async () => {
    expect(served.length).toBeGreaterThan(50);
    expect(served.some((s) => s.channel === 4)).toBe(false);
    const r = await sendRaw(base.url, {
      method: 'POST', path: '/v1/chat/completions', headers: [['content-type', 'application/json'], ['authorization', `Bearer ${TOKEN_A}`]],
      body: Buffer.from('{"model":"gpt-4o-mini"}'),
    });
    expect(r.status).toBe(200);
    // eslint-disable-next-line no-console
    console.log(`bad-input corpus: ${TOTAL} cases; statuses ${JSON.stringify(Object.fromEntries([...statuses].sort((a, b) => a[0] - b[0])))}; slowest ${Math.max(...timings)} ms`);
  });
});
