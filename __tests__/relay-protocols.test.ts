// relay() and the native upstream protocols (API.md 11.5), through HTTP with supertest and real
// loopback upstreams that record what they received: the credential header of each channel
// type, Azure deployment paths, model mapping on the JSON body and on Gemini paths, and what a
// hostile caller cannot make the relay send (its own credentials, a mapping by prototype names,
// a re-serialised body).
import { afterEach, describe, expect, test } from '@jest/globals';
import express, { type RequestHandler } from 'express';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { distributor, type ChannelInput, type DistributorHandler, type RequestContext } from '../lib';
import type { ChannelType } from '../lib/types';
import { relay, type RelayHandler, type RelayOptions } from '../lib/entry/relay';
import { memoryLogger } from './helpers/create-app';

const KEY = {
  openai: 'chan-openai-key-0001',
  azure: 'chan-azure-key-0002',
  anthropic: 'chan-anthropic-key-0003',
  gemini: 'chan-gemini-key-0004',
} as const;
const CALLER = 'tenant-caller-credential-77';
const CRED_HEADERS = ['authorization', 'x-api-key', 'api-key', 'x-goog-api-key'];
/** The header each type authenticates with, and its value for a key. */
const AUTH: Record<ChannelType, [string, (k: string) => string]> = {
  openai: ['authorization', (k) => `Bearer ${k}`],
  azure: ['api-key', (k) => k],
  anthropic: ['x-api-key', (k) => k],
  gemini: ['x-goog-api-key', (k) => k],
};

interface Got {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface Upstream {
  url: string;
  got: Got[];
}

const closers: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (closers.length) await closers.pop()?.();
});

/** A loopback upstream recording every request; answers `status` with a small JSON body. */
async function upstream(status = 200, answer: (g: Got) => string = () => '{"ok":true}'): Promise<Upstream> {
  const got: Got[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const g = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
      got.push(g);
      const text = answer(g);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  closers.push(() => new Promise<void>((r) => {
    server.close(() => r());
    server.closeAllConnections();
  }));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got };
}

function chan(id: number, up: Upstream, type: ChannelType, extra: Partial<ChannelInput> = {}): ChannelInput {
  const base = type === 'azure' ? up.url : type === 'gemini' ? `${up.url}/v1beta` : `${up.url}/v1`;
  return { id, name: `ch${id}`, models: ['gpt-4o', 'claude-sonnet-4', 'gemini-2.5-flash'], baseUrl: base, key: KEY[type], type, ...extra };
}

/** [before...] -> context stub -> distributor -> catch-all relay, as an Express app for supertest. */
function app(channels: ChannelInput[], relayOptions: RelayOptions = {}, before: RequestHandler[] = []): express.Express {
  const a = express();
  for (const b of before) a.use(b);
  a.use((_req, res, next) => {
    res.locals.token = {} as RequestContext;
    next();
  });
  const mw: DistributorHandler = distributor({ channels, logger: memoryLogger(), retry: { times: 2 } });
  const fwd: RelayHandler = relay(relayOptions);
  a.use(mw);
  a.use(fwd);
  closers.push(async () => {
    await fwd.close();
    await mw.shutdown();
  });
  return a;
}

/** Every credential style a caller might send, all named in forwardHeaders by a permissive operator. */
const HOSTILE: RelayOptions = { forwardHeaders: ['authorization', 'x-api-key', 'api-key', 'x-goog-api-key'] };
const callerCreds = {
  authorization: `Bearer ${CALLER}`, 'x-api-key': CALLER, 'api-key': CALLER, 'x-goog-api-key': CALLER,
};

describe('authentication per channel type', () => {
  test.each(['openai', 'azure', 'anthropic', 'gemini'] as const)('%s: the channel key in its header, and no other credential', async (type) => {
    const up = await upstream();
    const a = app([chan(1, up, type)]);
    const path = type === 'gemini' ? '/v1beta/models/gemini-2.5-flash:generateContent' : '/v1/chat/completions';
    await request(a).post(path).send({ model: type === 'gemini' ? undefined : 'gpt-4o', messages: [] }).expect(200);
    const h = up.got[0].headers;
    const [name, value] = AUTH[type];
    expect(h[name]).toBe(value(KEY[type]));
    for (const other of CRED_HEADERS) if (other !== name) expect(h[other]).toBeUndefined();
  });

  test.each(['openai', 'azure', 'anthropic', 'gemini'] as const)('hostile: %s channel: a caller\'s authorization, x-api-key, api-key, x-goog-api-key and ?key= never reach it, even when named in forwardHeaders', async (type) => {
    const up = await upstream();
    const a = app([chan(1, up, type)], HOSTILE);
    const path = type === 'gemini' ? '/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key=' : '/v1/chat/completions?x=1&key=';
    await request(a).post(path + CALLER).set(callerCreds).send({ model: 'gpt-4o', messages: [] }).expect(200);
    const g = up.got[0];
    const [name, value] = AUTH[type];
    expect(g.headers[name]).toBe(value(KEY[type]));
    for (const other of CRED_HEADERS) if (other !== name) expect(g.headers[other]).toBeUndefined();
    expect(JSON.stringify(g.headers)).not.toContain(CALLER);
    expect(g.path).not.toContain(CALLER);
    expect(g.path).not.toMatch(/[?&]key=/);
  });

  test('anthropic: anthropic-version is the caller\'s when sent, else 2023-06-01; other types get none added', async () => {
    const up = await upstream();
    const a = app([chan(1, up, 'anthropic')]);
    await request(a).post('/v1/messages').send({ model: 'claude-sonnet-4', max_tokens: 5, messages: [] }).expect(200);
    await request(a).post('/v1/messages').set('anthropic-version', '2024-01-01').send({ model: 'claude-sonnet-4', max_tokens: 5, messages: [] }).expect(200);
    expect(up.got.map((g) => g.headers['anthropic-version'])).toEqual(['2023-06-01', '2024-01-01']);
    const up2 = await upstream();
    await request(app([chan(2, up2, 'openai')])).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(up2.got[0].headers['anthropic-version']).toBeUndefined();
  });

  test('a retry to a channel of another type takes none of the first channel\'s credentials along', async () => {
    const bad = await upstream(500, () => '{"error":{"message":"down"}}');
    const good = await upstream();
    // anthropic first (priority), then openai; and the other way round
    await request(app([chan(1, bad, 'anthropic', { priority: 1 }), chan(2, good, 'openai')])).post('/v1/messages').send({ model: 'gpt-4o' }).expect(200);
    expect(bad.got[0].headers['x-api-key']).toBe(KEY.anthropic);
    expect(good.got[0].headers.authorization).toBe(`Bearer ${KEY.openai}`);
    expect(good.got[0].headers['x-api-key']).toBeUndefined();
    const bad2 = await upstream(500, () => '{"error":{"message":"down"}}');
    const good2 = await upstream();
    await request(app([chan(1, bad2, 'openai', { priority: 1 }), chan(2, good2, 'gemini')])).post('/v1beta/models/gpt-4o:generateContent').send({}).expect(200);
    expect(bad2.got[0].headers.authorization).toBe(`Bearer ${KEY.openai}`);
    expect(good2.got[0].headers['x-goog-api-key']).toBe(KEY.gemini);
    expect(good2.got[0].headers.authorization).toBeUndefined();
  });

  test('a channel without a key gets no credential of the relay\'s; the caller\'s named x-api-key goes as it came, its authorization never', async () => {
    const up = await upstream();
    await request(app([chan(1, up, 'anthropic', { key: undefined })], HOSTILE)).post('/v1/messages').set(callerCreds).send({ model: 'gpt-4o' }).expect(200);
    expect(up.got[0].headers.authorization).toBeUndefined();
    expect(up.got[0].headers['x-api-key']).toBe(CALLER);
  });

  test('the channel key an upstream echoes in an error never reaches the caller', async () => {
    const up = await upstream(401, (g) => JSON.stringify({ type: 'error', error: { type: 'authentication_error', message: `invalid x-api-key ${String(g.headers['x-api-key'])}` } }));
    const r = await request(app([chan(1, up, 'anthropic')])).post('/v1/messages').send({ model: 'gpt-4o' });
    expect(r.status).toBe(401);
    expect(r.text).not.toContain(KEY.anthropic);
    expect(r.body).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
  });
});

describe('azure paths', () => {
  test('/v1/<rest> -> /openai/deployments/<model>/<rest>?api-version=2024-10-21, other query parameters kept in order', async () => {
    const up = await upstream();
    const a = app([chan(1, up, 'azure')]);
    await request(a).post('/v1/chat/completions').send({ model: 'gpt-4o', messages: [] }).expect(200);
    await request(a).post('/v1/embeddings?b=2&a=%20x').send({ model: 'gpt-4o', input: 'x' }).expect(200);
    expect(up.got.map((g) => g.path)).toEqual([
      '/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21',
      '/openai/deployments/gpt-4o/embeddings?api-version=2024-10-21&b=2&a=%20x',
    ]);
  });

  test('apiVersion is used, the caller\'s api-version (any spelling) is replaced, and its ?key= dropped', async () => {
    const up = await upstream();
    await request(app([chan(1, up, 'azure', { apiVersion: '2025-01-01-preview' })]))
      .post('/v1/chat/completions?api-version=1999-01-01&API-Version=x&key=caller&z=1').send({ model: 'gpt-4o' }).expect(200);
    expect(up.got[0].path).toBe('/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01-preview&z=1');
  });

  test('the mapped model names the deployment (percent-encoded); a base URL ending in /openai is not repeated', async () => {
    const up = await upstream();
    await request(app([chan(1, up, 'azure', { baseUrl: `${up.url}/openai/`, modelMapping: { 'gpt-4o': 'prod gpt/4o' } })]))
      .post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(up.got[0].path).toBe('/openai/deployments/prod%20gpt%2F4o/chat/completions?api-version=2024-10-21');
    expect(JSON.parse(up.got[0].body.toString()).model).toBe('prod gpt/4o');
  });

  test('hostile: a deployment path cannot be turned into a dot segment', async () => {
    const up = await upstream();
    const r = await request(app([chan(1, up, 'azure', { models: ['..'] })])).post('/v1/chat/completions').send({ model: '..' });
    expect(r.status).toBe(400);
    expect(r.body.error.code).toBe('invalid_path');
    expect(up.got).toEqual([]);
  });
});

describe('model mapping', () => {
  const mapping = { 'gpt-4o': 'gpt-4o-2024-11-20', 'gemini-2.5-flash': 'gemini-2.5-flash-001' };

  test('the top-level model is rewritten in place: every other byte unchanged, content-length recomputed', async () => {
    const up = await upstream();
    const raw = '{ "messages" : [ {"role":"user","content":"model: gpt-4o","model":"gpt-4o"} ],\n  "model"  :  "gpt-4o", "seed": 12345678901234567890, "x": 1.50 }';
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })])).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    const sent = up.got[0].body.toString();
    expect(sent).toBe(raw.replace('"model"  :  "gpt-4o"', '"model"  :  "gpt-4o-2024-11-20"'));
    expect(up.got[0].headers['content-length']).toBe(String(Buffer.byteLength(sent)));
  });

  test('a model given by JSON string (the reference\'s model_mapping) maps the same', async () => {
    const up = await upstream();
    await request(app([chan(1, up, 'anthropic', { modelMapping: JSON.stringify({ 'claude-sonnet-4': 'claude-sonnet-4-20250514' }) })]))
      .post('/v1/messages').send({ model: 'claude-sonnet-4', max_tokens: 1, messages: [] }).expect(200);
    expect(JSON.parse(up.got[0].body.toString())).toEqual({ model: 'claude-sonnet-4-20250514', max_tokens: 1, messages: [] });
  });

  test('an unmapped model keeps the exact bytes (odd spacing, big integers, unicode)', async () => {
    const up = await upstream();
    const raw = '{"model":"claude-sonnet-4" ,"n":1e400,"big":123456789012345678901234567890,"t":"\\u00e9 é"}';
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })])).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    expect(up.got[0].body.toString()).toBe(raw);
  });

  test('duplicate and escaped "model" keys: every top-level one is rewritten when the last one names the mapped model', async () => {
    const up = await upstream();
    const raw = '{"model":"other","mod\\u0065l":"gpt-4o","nested":{"model":"gpt-4o"}}';
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })])).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    expect(up.got[0].body.toString()).toBe('{"model":"gpt-4o-2024-11-20","mod\\u0065l":"gpt-4o-2024-11-20","nested":{"model":"gpt-4o"}}');
  });

  test('a Gemini path\'s model segment is mapped; the method and query stay', async () => {
    const up = await upstream();
    const a = app([chan(1, up, 'gemini', { modelMapping: mapping })]);
    await request(a).post('/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse').send({ contents: [] }).expect(200);
    await request(a).post('/v1beta/models/gpt-4o:generateContent').send({ contents: [] }).expect(200);
    await request(a).post('/v1beta/models/claude-sonnet-4:generateContent').send({ contents: [] }).expect(200);
    expect(up.got.map((g) => g.path)).toEqual([
      '/v1beta/models/gemini-2.5-flash-001:streamGenerateContent?alt=sse',
      '/v1beta/models/gpt-4o-2024-11-20:generateContent',
      '/v1beta/models/claude-sonnet-4:generateContent',
    ]);
    expect(up.got[0].body.toString()).toBe('{"contents":[]}');
  });

  test('a retry to a channel without the mapping sends the original bytes', async () => {
    const bad = await upstream(500, () => '{"error":{"message":"down"}}');
    const good = await upstream();
    const raw = '{"model": "gpt-4o"}';
    await request(app([chan(1, bad, 'openai', { priority: 1, modelMapping: mapping }), chan(2, good, 'openai')]))
      .post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    expect(bad.got[0].body.toString()).toBe('{"model": "gpt-4o-2024-11-20"}');
    expect(good.got[0].body.toString()).toBe(raw);
  });

  test('a body parsed by express.json() before the distributor is mapped too', async () => {
    const up = await upstream();
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })], {}, [express.json()])).post('/v1/chat/completions').send({ model: 'gpt-4o', n: 2 }).expect(200);
    expect(JSON.parse(up.got[0].body.toString())).toEqual({ model: 'gpt-4o-2024-11-20', n: 2 });
  });

  test('hostile: model names like __proto__, constructor, toString or hasOwnProperty map nothing', async () => {
    const up = await upstream();
    const names = ['__proto__', 'constructor', 'toString', 'hasOwnProperty', 'valueOf'];
    const a = app([chan(1, up, 'openai', { models: names, modelMapping: mapping })]);
    for (const model of names) {
      const raw = `{"model":${JSON.stringify(model)},"x":1}`;
      await request(a).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
      expect(up.got[up.got.length - 1].body.toString()).toBe(raw);
    }
    expect(up.got).toHaveLength(names.length);
  });

  test('hostile: a body trying to smuggle a mapping (__proto__, constructor members) maps nothing and goes byte for byte', async () => {
    const up = await upstream();
    const raw = '{"__proto__":{"gpt-4o":"evil"},"constructor":{"prototype":{"claude-sonnet-4":"evil"}},"model":"claude-sonnet-4"}';
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })])).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    expect(up.got[0].body.toString()).toBe(raw);
    expect(({} as Record<string, unknown>)['gpt-4o']).toBeUndefined();
  });

  test('hostile: a huge unmapped body (5 MiB) is forwarded byte for byte', async () => {
    const up = await upstream();
    const filler = 'x'.repeat(5 * 1024 * 1024);
    const raw = `{"model":"claude-sonnet-4","messages":[{"role":"user","content":"${filler}"}],  "model_hint" : "gpt-4o"}`;
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })])).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    expect(up.got[0].body.equals(Buffer.from(raw))).toBe(true);
  });

  test('a huge mapped body is rewritten in its model only', async () => {
    const up = await upstream();
    const filler = 'y'.repeat(5 * 1024 * 1024);
    const raw = `{"messages":[{"role":"user","content":"${filler}"}],"model":"gpt-4o"}`;
    await request(app([chan(1, up, 'openai', { modelMapping: mapping })])).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(200);
    expect(up.got[0].body.equals(Buffer.from(raw.replace('"model":"gpt-4o"', '"model":"gpt-4o-2024-11-20"')))).toBe(true);
  });
});
