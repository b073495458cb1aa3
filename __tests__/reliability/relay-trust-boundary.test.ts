// relay() at the trust boundary (docs/security.md, docs/relay.md): what a caller can make the relay send
// upstream (headers, the `key` query parameter, a mislabelled body, dot segments and absolute-form
// targets), what an upstream can make it send back (the channel key in response headers), and
// that no upstream request is made or left open for a client that has gone. Real loopback
// servers throughout; every behaviour observed on 0.1.0 has a test that failed there, and each
// new rule has a hostile-tenant test that tries to get around it.
import { afterAll, afterEach, describe, expect, test } from '@jest/globals';
import express, { type RequestHandler } from 'express';
import { EventEmitter } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync, gunzipSync } from 'node:zlib';
import {
  ChannelStatus, distributor, type ChannelInput, type DistributorHandler, type DistributorOptions, type RequestContext,
} from '../../lib';
import { relay, type RelayHandler, type RelayOptions } from '../../lib/entry/relay';
import { memoryLogger } from '../helpers/create-app';
import { closeClient, mock, post, stopAll } from '../helpers/relay-kit';
import { sendRaw, sleep } from './kit';

const MODEL = 'gpt-4o-mini';
/** Channel keys; none starts with `sk-`, so only the relay's own redaction can hide them. */
const KEY1 = 'AIzaTRUST-boundary-channel-key-0001';
const KEY2 = 'AIzaTRUST-boundary-channel-key-0002';
/** A key with characters a URL percent-encodes. */
const KEY_ODD = 'AIzaTRUST+odd/key=0003';
const CALLER_TOKEN = 'tenant-trust-caller-token-9d8c7b';
const chat = (extra: Record<string, unknown> = {}) => ({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], ...extra });

type Target = { url: string };
const chan = (id: number, target: Target | string, extra: Partial<ChannelInput> = {}): ChannelInput => ({
  id, name: `ch${id}`, models: [MODEL], baseUrl: `${typeof target === 'string' ? target : target.url}/v1`, key: id === 2 ? KEY2 : KEY1, ...extra,
});

// ---- a gateway: [before...] -> auth stub -> distributor at '/' -> catch-all relay ---------------

interface Gw {
  url: string;
  mw: DistributorHandler;
  fwd: RelayHandler;
}
const closers: Array<() => Promise<void>> = [];

async function gw(channels: ChannelInput[], options: Partial<DistributorOptions> = {}, relayOptions: RelayOptions = {}, before: RequestHandler[] = []): Promise<Gw> {
  const app = express();
  app.set('etag', false);
  for (const b of before) app.use(b);
  app.use((req, res, next) => {
    const h = req.headers['x-test-context'];
    res.locals.token = typeof h === 'string' ? (JSON.parse(h) as RequestContext) : {};
    next();
  });
  const mw = distributor({ channels, logger: memoryLogger(), ...options } as DistributorOptions);
  const fwd = relay(relayOptions);
  app.use(mw);
  app.use(fwd); // a catch-all relay route, as in the reports
  const server = await new Promise<http.Server>((resolve) => {
    const s = app.listen(0, '127.0.0.1', () => resolve(s));
  });
  closers.push(async () => {
    await new Promise<void>((r) => {
      server.close(() => r());
      server.closeAllConnections();
    });
    await fwd.close();
    await mw.shutdown();
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, mw, fwd };
}

/** An upstream that records the raw bytes and headers it got and answers 200 `{"ok":true}`. */
interface Recorder extends Target {
  got: Array<{ path: string; headers: http.IncomingHttpHeaders; body: Buffer }>;
}
async function recorder(answer?: (r: Recorder['got'][number], res: http.ServerResponse) => void): Promise<Recorder> {
  const got: Recorder['got'] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r = { path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks) };
      got.push(r);
      if (answer) return answer(r, res);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  closers.push(() => new Promise<void>((r) => {
    server.close(() => r());
    server.closeAllConnections();
  }));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, got };
}

/** Polls `cond` every 10 ms for at most `ms`; resolves with its last value. */
async function until(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await sleep(10);
  return cond();
}

afterEach(async () => {
  while (closers.length) await closers.pop()?.();
  await stopAll();
});
afterAll(() => closeClient());

const auth = { authorization: `Bearer ${CALLER_TOKEN}` };

// =================================================================================================

describe('request headers: an allowlist', () => {
  test('0.1.0: a caller\'s OpenAI-Organization made the upstream answer 401 and auto-disabled every channel; now it is not forwarded', async () => {
    const a = await mock({ name: 'a', failIfHeader: 'openai-organization', failStatus: 401 });
    const b = await mock({ name: 'b', failIfHeader: 'openai-organization', failStatus: 401 });
    const g = await gw([chan(1, a, { priority: 1 }), chan(2, b)], { health: { autoDisable: {} } });
    const r = await post(g.url, chat(), { ...auth, 'OpenAI-Organization': 'org-someone-elses', 'OpenAI-Project': 'proj_x' });
    expect(r.status).toBe(200);
    expect(a.stats.last!.headers['openai-organization']).toBeUndefined();
    expect(a.stats.last!.headers['openai-project']).toBeUndefined();
    await sleep(50);
    expect(g.mw.registry.get(1)?.status).toBe(ChannelStatus.Enabled);
    expect(g.mw.registry.get(2)?.status).toBe(ChannelStatus.Enabled);
  });

  test('only the default allowlist is forwarded; credentials, cookies, proxy and tracing headers are not', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)]);
    const r = await post(g.url, chat(), {
      ...auth, accept: 'application/json', 'user-agent': 'caller/1.0', 'openai-beta': 'assistants=v2', 'anthropic-version': '2023-06-01',
      'anthropic-beta': 'tools-2024', 'x-request-id': 'req-42', 'x-api-key': 'caller-x-api-key', 'api-key': 'caller-azure-key',
      'x-goog-api-key': 'caller-goog-key', cookie: 'sid=caller', 'x-forwarded-for': '10.0.0.1', 'x-real-ip': '10.0.0.1', forwarded: 'for=10.0.0.1',
      'x-custom': 'nope', 'openai-organization': 'org-x',
    });
    expect(r.status).toBe(200);
    const h = up.got[0].headers;
    expect(h).toMatchObject({
      'content-type': 'application/json', accept: 'application/json', 'user-agent': 'caller/1.0', 'openai-beta': 'assistants=v2',
      'anthropic-version': '2023-06-01', 'anthropic-beta': 'tools-2024', 'x-request-id': 'req-42', authorization: `Bearer ${KEY1}`,
    });
    for (const name of ['x-api-key', 'api-key', 'x-goog-api-key', 'cookie', 'x-forwarded-for', 'x-real-ip', 'forwarded', 'x-custom', 'openai-organization', 'x-test-context']) {
      expect(h[name]).toBeUndefined();
    }
    expect(JSON.stringify(h)).not.toContain(CALLER_TOKEN);
  });

  test('forwardHeaders adds names (any casing) and RegExps (tested on the lower-case name); the headers hook still runs after', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)], {}, {
      forwardHeaders: ['OpenAI-Organization', /^x-team-/g],
      headers: (h, { channel }) => {
        h['x-api-key'] = String(channel.key);
      },
    });
    for (let i = 0; i < 3; i++) {
      // three times: a /g RegExp keeps no lastIndex state between requests
      expect((await post(g.url, chat(), { ...auth, 'openai-organization': 'org-mine', 'X-Team-Id': `t${i}`, 'x-other': 'no' })).status).toBe(200);
      expect(up.got[i].headers).toMatchObject({ 'openai-organization': 'org-mine', 'x-team-id': `t${i}`, 'x-api-key': KEY1 });
      expect(up.got[i].headers['x-other']).toBeUndefined();
    }
  });

  test('hostile: forwardHeaders cannot be made to forward host, content-length or hop-by-hop headers', () => {
    for (const name of ['host', 'Host', 'content-length', 'Content-Length', 'connection', 'transfer-encoding', 'te', 'upgrade', 'keep-alive', 'proxy-authorization', 'expect', 'accept-encoding', 'content-encoding']) {
      expect(() => relay({ forwardHeaders: [name] })).toThrow(/forwardHeaders cannot name/);
    }
    for (const bad of [['x y'], [''], ['a:b'], ['x\r\nhost: evil'], [42], [null], [{}]] as unknown[][]) {
      expect(() => relay({ forwardHeaders: bad as string[] })).toThrow(TypeError);
    }
    expect(() => relay({ forwardHeaders: 'x-a' as unknown as string[] })).toThrow(/array/);
    expect(() => relay({ forwardHeaders: ['X-Trace', /^x-/i] }).close()).not.toThrow();
  });

  test('hostile: with forwardHeaders [/.*/] the caller still cannot set host, framing or hop-by-hop headers, nor replace the channel key', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)], {}, { forwardHeaders: [/.*/, 'authorization', 'x-trace'] });
    const body = Buffer.from(JSON.stringify(chat()));
    const r = await sendRaw(g.url, {
      method: 'POST', path: '/v1/chat/completions',
      headers: [
        ['Host', 'evil.example'], ['Content-Type', 'application/json'], ['Content-Length', String(body.length)], ['Authorization', `Bearer ${CALLER_TOKEN}`],
        ['Connection', 'keep-alive, X-Trace'], ['X-Trace', 'hop'], ['Keep-Alive', 'timeout=5'], ['TE', 'trailers'], ['Upgrade', 'h2c'],
        ['Proxy-Authorization', 'Basic Y2FsbGVyOnNlY3JldA=='], ['Accept-Encoding', 'gzip'], ['X-Kept', 'yes'],
      ],
      body,
    });
    expect(r.status).toBe(200);
    const h = up.got[0].headers;
    expect(h.host).toBe(new URL(up.url).host);
    expect(h['content-length']).toBe(String(body.length)); // undici's, for the bytes it sent
    expect(h.authorization).toBe(`Bearer ${KEY1}`); // the channel key wins over a named authorization
    expect(h['x-kept']).toBe('yes');
    for (const name of ['x-trace', 'keep-alive', 'te', 'upgrade', 'proxy-authorization', 'accept-encoding', 'transfer-encoding']) expect(h[name]).toBeUndefined();
  });

  test('hostile: odd header-name casing changes nothing (Node lower-cases names; the allowlist compares lower-case)', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)]);
    const body = Buffer.from(JSON.stringify(chat()));
    const r = await sendRaw(g.url, {
      method: 'POST', path: '/v1/chat/completions',
      headers: [['CONTENT-type', 'application/json'], ['OpenAI-ORGANIZATION', 'org-x'], ['x-API-key', 'caller-x'], ['COOKIE', 'a=b'], ['AuThOrIzAtIoN', `Bearer ${CALLER_TOKEN}`], ['User-AGENT', 'odd/1']],
      body,
    });
    expect(r.status).toBe(200);
    const h = up.got[0].headers;
    expect(h['content-type']).toBe('application/json');
    expect(h['user-agent']).toBe('odd/1');
    expect(h.authorization).toBe(`Bearer ${KEY1}`);
    for (const name of ['openai-organization', 'x-api-key', 'cookie']) expect(h[name]).toBeUndefined();
  });
});

// =================================================================================================

describe('the caller\'s key query parameter', () => {
  test('0.1.0: a caller\'s Gemini-style ?key= went upstream; now it is dropped when the channel has a key, other parameters byte-identical', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)]);
    const r = await post(g.url, chat(), auth, '/v1/chat/completions?alt=sse&key=caller-gemini-key&x=a%20b+c&empty=&flag');
    expect(r.status).toBe(200);
    expect(up.got[0].path).toBe('/v1/chat/completions?alt=sse&x=a%20b+c&empty=&flag');
    expect(up.got[0].path).not.toContain('caller-gemini-key');
  });

  test('hostile: Key, KEY, %6Bey, k%65y, repeated and only-parameter forms are all dropped; keyless channels keep it', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)]);
    const cases: Array<[string, string]> = [
      ['?Key=A1&a=1', '?a=1'],
      ['?a=1&KEY=A2', '?a=1'],
      ['?%6Bey=A3&a=1', '?a=1'],
      ['?k%65y=A4', ''],
      ['?key=A5&key=A6&b=%6B', '?b=%6B'],
      ['?key', ''],
      ['?keys=1&monkey=2&key_id=3', '?keys=1&monkey=2&key_id=3'],
    ];
    for (const [q, want] of cases) {
      expect((await post(g.url, chat(), auth, `/v1/chat/completions${q}`)).status).toBe(200);
      expect(up.got[up.got.length - 1].path).toBe(`/v1/chat/completions${want}`);
    }
    const keyless = await recorder();
    const g2 = await gw([chan(1, keyless, { key: undefined })]);
    await post(g2.url, chat(), {}, '/v1/chat/completions?key=callers-own&a=1');
    expect(keyless.got[0].path).toBe('/v1/chat/completions?key=callers-own&a=1');
  });

  test('an upstream error echoing the caller\'s ?key= value is redacted', async () => {
    const up = await mock({ failRate: 1, failStatus: 400, failMessage: 'bad key caller-gemini-key-777' });
    const g = await gw([chan(1, up, { key: undefined })]);
    const r = await post(g.url, chat(), {}, '/v1/chat/completions?key=caller-gemini-key-777');
    expect(r.status).toBe(400);
    expect(r.text).not.toContain('caller-gemini-key-777');
  });
});

// =================================================================================================

describe('request bodies and content-encoding', () => {
  test('0.1.0: a gzip body decoded by express.json() went upstream re-serialised but still labelled gzip; now without content-encoding', async () => {
    // a strict upstream: it decodes what content-encoding says, and answers 400 when that fails
    const up = await recorder((r, res) => {
      let body = r.body;
      if (r.headers['content-encoding'] === 'gzip') {
        try {
          body = gunzipSync(body);
        } catch {
          res.writeHead(400, { 'content-type': 'application/json' });
          res.end('{"error":{"message":"body is not gzip","type":"invalid_request_error","code":"bad_encoding"}}');
          return;
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ echo: JSON.parse(body.toString('utf8')) }));
    });
    const g = await gw([chan(1, up)], {}, {}, [express.json()]);
    const gz = gzipSync(Buffer.from(JSON.stringify(chat({ temperature: 0.5 }))));
    const r = await sendRaw(g.url, {
      method: 'POST', path: '/v1/chat/completions',
      headers: [['content-type', 'application/json'], ['content-encoding', 'gzip'], ['authorization', `Bearer ${CALLER_TOKEN}`]],
      body: gz,
    });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.text)).toEqual({ echo: chat({ temperature: 0.5 }) });
    const h = up.got[0].headers;
    expect(h['content-encoding']).toBeUndefined();
    expect(h['content-length']).toBe(String(up.got[0].body.length)); // the re-serialised length, not the caller's
    expect(up.got[0].body.length).not.toBe(gz.length);
  });

  test('a body the distributor did not decode keeps its content-encoding: a raw passthrough stream goes as is', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up, { models: ['whisper-1'] })], { extractModel: () => 'whisper-1' });
    const gz = gzipSync(Buffer.from('binary-ish payload '.repeat(50)));
    const r = await sendRaw(g.url, {
      method: 'POST', path: '/v1/audio/transcriptions',
      headers: [['content-type', 'application/octet-stream'], ['content-encoding', 'gzip']],
      body: gz,
    });
    expect(r.status).toBe(200);
    expect(up.got[0].headers['content-encoding']).toBe('gzip');
    expect(up.got[0].body.equals(gz)).toBe(true);
    expect(gunzipSync(up.got[0].body).toString()).toBe('binary-ish payload '.repeat(50));
  });

  test('the distributor\'s own raw bytes are sent unchanged with the caller\'s content-encoding (identity here)', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)]);
    const raw = '{ "model":"gpt-4o-mini" ,"messages":[] }';
    const r = await sendRaw(g.url, { method: 'POST', path: '/v1/chat/completions', headers: [['content-type', 'application/json'], ['content-encoding', 'identity']], body: Buffer.from(raw) });
    expect(r.status).toBe(200);
    expect(up.got[0].body.toString()).toBe(raw);
    expect(up.got[0].headers['content-encoding']).toBe('identity');
  });

  test('hostile: forwardHeaders [/.*/] does not bring back content-encoding or content-length for a decoded body', async () => {
    const up = await recorder();
    const g = await gw([chan(1, up)], {}, { forwardHeaders: [/.*/] }, [express.json()]);
    const gz = gzipSync(Buffer.from(JSON.stringify(chat())));
    const r = await sendRaw(g.url, { method: 'POST', path: '/v1/chat/completions', headers: [['content-type', 'application/json'], ['content-encoding', 'gzip']], body: gz });
    expect(r.status).toBe(200);
    expect(up.got[0].headers['content-encoding']).toBeUndefined();
    expect(JSON.parse(up.got[0].body.toString('utf8'))).toEqual(chat());
  });
});

// =================================================================================================

describe('response headers never carry the channel key back', () => {
  const echoHeaders = { location: 'https://upstream.example/cb?key={token}&x=1', 'x-debug-auth': '{auth}', 'x-plain': 'fine' };

  test('0.1.0: Location ?key=<channel key> and a debug header echoing the key reached the caller; now redacted (JSON and SSE)', async () => {
    const up = await mock({ headers: echoHeaders });
    const g = await gw([chan(1, up)]);
    for (const stream of [false, true]) {
      const r = await post(g.url, chat({ stream }), auth);
      expect(r.status).toBe(200);
      expect(JSON.stringify(r.headers)).not.toContain(KEY1);
      expect(r.headers.location).toBe('https://upstream.example/cb?key=[REDACTED]&x=1');
      expect(r.headers['x-debug-auth']).toBe('Bearer [REDACTED]');
      expect(r.headers['x-plain']).toBe('fine');
    }
  });

  test('error answers (after retries) carry no header or body with the key, also a Retry-After echoing it', async () => {
    const up = await mock({ headers: echoHeaders, failRate: 1, failStatus: 429, retryAfter: '5', failMessage: 'key {auth} is rate limited' });
    const g = await gw([chan(1, up)]);
    const r = await post(g.url, chat(), auth);
    expect(r.status).toBe(429);
    expect(JSON.stringify(r.headers) + r.text).not.toContain(KEY1);
    expect(r.headers['retry-after']).toBe('5');
  });

  test('hostile: the key percent-encoded in a Location, or in a repeated header, is redacted too', async () => {
    const up = await mock({ headers: { location: 'https://upstream.example/cb?key={token_url}', 'x-echo': '{token}' } });
    const g = await gw([chan(1, up, { key: KEY_ODD })]);
    const r = await post(g.url, chat(), auth);
    expect(r.status).toBe(200);
    const text = JSON.stringify(r.headers);
    expect(text).not.toContain(KEY_ODD);
    expect(text).not.toContain(encodeURIComponent(KEY_ODD));
    expect(r.headers.location).toBe('https://upstream.example/cb?key=[REDACTED]');

    const dup = await recorder((_r, res) => {
      res.setHeader('x-dup', ['one', `Bearer ${KEY1}`]);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
    const g2 = await gw([chan(1, dup)]);
    const r2 = await post(g2.url, chat(), auth);
    expect(JSON.stringify(r2.headers)).not.toContain(KEY1);
  });
});

// =================================================================================================

/** Opens a request with node:http, writes the whole body, and lets the caller destroy it. */
function openRequest(url: string, path: string, body: unknown, headers: Record<string, string> = {}): { req: http.ClientRequest; response: Promise<http.IncomingMessage | undefined> } {
  const u = new URL(url);
  const data = Buffer.from(JSON.stringify(body));
  const req = http.request({ host: u.hostname, port: u.port, method: 'POST', path, agent: false, headers: { 'content-type': 'application/json', 'content-length': data.length, ...headers } });
  const response = new Promise<http.IncomingMessage | undefined>((resolve) => {
    req.on('response', resolve);
    req.on('error', () => resolve(undefined));
    req.on('close', () => resolve(undefined));
  });
  req.end(data);
  return { req, response };
}

describe('a client that has gone', () => {
  test('0.1.0: clients gone while an async context was pending still got upstream requests, left open; now none is made', async () => {
    const up = await mock({ streamBytes: 32 << 20 });
    const entered = new EventEmitter();
    const g = await gw([chan(1, up)], {
      context: async (req) => {
        entered.emit('in', req.headers['x-n']);
        await sleep(50);
        return {};
      },
    });
    const clients = new Map<string, http.ClientRequest>();
    entered.on('in', (n: string) => clients.get(n)?.destroy());
    const N = 40;
    for (let i = 0; i < N; i++) clients.set(String(i), openRequest(g.url, '/v1/chat/completions', chat({ stream: true }), { 'x-n': String(i) }).req);
    await until(() => [...clients.values()].every((c) => c.destroyed), 3000);
    await sleep(300); // every context has resolved by now, and every relay() has run
    expect(up.stats.hits).toBe(0);
    expect(up.requests).toHaveLength(0);
    expect(await until(() => up.open === 0, 2000)).toBe(true);
  });

  test('a slow client that stops reading a large streamed answer, then leaves: the paused upstream answer is aborted', async () => {
    const up = await mock({ streamBytes: 64 << 20 });
    const g = await gw([chan(1, up)]);
    const { req, response } = openRequest(g.url, '/v1/chat/completions', chat({ stream: true }));
    const res = await response;
    expect(res?.statusCode).toBe(200);
    res!.pause(); // never read: the gateway's writes back up, relay() waits for 'drain'
    await sleep(300);
    expect(up.open).toBe(1); // the upstream is stuck writing to a paused relay
    req.destroy();
    expect(await until(() => up.open === 0, 2000)).toBe(true);
    expect(up.stats.aborted).toBe(1);
    expect(up.stats.ok).toBe(0);
  });

  test('hostile: a client that leaves while relay() waits for a Retry-After gets no further upstream request', async () => {
    const up = await mock({ failFirst: 1, failStatus: 429, retryAfter: '1' });
    const g = await gw([chan(1, up)], { retry: { maxRetryAfterMs: 2000 } });
    const { req } = openRequest(g.url, '/v1/chat/completions', chat());
    expect(await until(() => up.stats.hits === 1, 2000)).toBe(true);
    await sleep(100);
    req.destroy();
    await sleep(1300); // past the Retry-After
    expect(up.stats.hits).toBe(1);
    expect(up.open).toBe(0);
  });

  test('a client that leaves while the upstream has not answered yet aborts that upstream request', async () => {
    const up = await mock({ delayMs: 2000 });
    const g = await gw([chan(1, up)]);
    const { req } = openRequest(g.url, '/v1/chat/completions', chat());
    expect(await until(() => up.stats.hits === 1, 2000)).toBe(true);
    req.destroy();
    expect(await until(() => up.open === 0, 1000)).toBe(true);
    expect(up.stats.aborted).toBe(1);
  });
});

// =================================================================================================

describe('the path rule', () => {
  const invalid = (r: { status: number; text: string }) => {
    expect(r.status).toBe(400);
    expect(JSON.parse(r.text)).toEqual({ error: { message: expect.any(String), type: 'invalid_request_error', code: 'invalid_path' } });
  };
  const send = (url: string, path: string) =>
    sendRaw(url, { method: 'POST', path, headers: [['content-type', 'application/json'], ['authorization', `Bearer ${CALLER_TOKEN}`]], body: Buffer.from(JSON.stringify(chat())) });

  test('0.1.0: /v1/%2e%2e/%2e%2e/%2e%2e/admin/keys went upstream with the channel key; now 400 invalid_path and no upstream request', async () => {
    const up = await mock();
    const g = await gw([chan(1, up)]);
    invalid(await send(g.url, '/v1/%2e%2e/%2e%2e/%2e%2e/admin/keys'));
    expect(up.requests).toHaveLength(0);
  });

  test('0.1.0: an absolute-form target (POST http://evil/... HTTP/1.1) was appended to the base path; now 400 invalid_path', async () => {
    const up = await mock();
    const g = await gw([chan(1, up)]);
    invalid(await send(g.url, 'http://evil.example/v1/chat/completions'));
    expect(up.requests).toHaveLength(0);
  });

  test('hostile: every spelling of a dot segment, a backslash, a leading // and ..; is refused before any upstream request', async () => {
    const up = await mock();
    const g = await gw([chan(1, up)]);
    const paths = [
      '/v1/../admin', '/v1/./chat/completions', '/v1/chat/..', '/v1/%2E%2e/admin', '/v1/%2e./admin', '/v1/.%2E/admin', '/v1/%2e/chat/completions',
      '/v1%2f..%2fadmin', '/v1%2F%2E%2E%2Fadmin', '/v1/%5c..%5cadmin', '/v1%5C%2e%2e%5Cadmin', '/v1/..;/admin', '/v1/%2e%2e;x=1/admin',
      '//evil.example/v1/chat/completions', '/%2fevil.example/v1/chat/completions', '/%5cevil.example/v1/chat/completions',
      '/v1/../v1/chat/completions?x=1',
    ];
    for (const p of paths) {
      const r = await send(g.url, p);
      // Node itself may refuse a request line before Express sees it; either way no upstream request
      if (r.status !== 400 || !r.text.includes('invalid_path')) throw new Error(`${p}: ${r.status} ${r.text}`);
    }
    // raw backslashes, if Node lets them through
    for (const p of ['/v1\\..\\admin', '/\\evil.example/v1/chat/completions']) {
      const r = await send(g.url, p);
      expect(r.status === 400 || r.status === 0).toBe(true);
    }
    expect(up.requests).toHaveLength(0);
  });

  test('decoded once: %252e%252e is the literal segment "%2e%2e" (harmless) and goes upstream byte-identical; dots inside names pass', async () => {
    const up = await mock();
    const g = await gw([chan(1, up, { baseUrl: up.url, models: [MODEL, 'gemini-1.5-pro'] })]);
    for (const p of ['/v1/%252e%252e/x', '/v1/files/a..b', '/v1beta/models/gemini-1.5-pro:generateContent', '/v1/chat/completions?next=../../x', '/v1/.well-known/x', '/v1/...']) {
      const r = await send(g.url, p);
      expect([r.status, up.requests[up.requests.length - 1]?.path]).toEqual([r.status === 200 ? 200 : 404, p]);
    }
  });

  test('a custom path result is checked the same way: a returned ../ is refused, the base path always leads', async () => {
    const up = await mock();
    let next = '/../admin/keys';
    const g = await gw([chan(1, up)], {}, { path: () => next });
    for (const bad of ['/../admin/keys', '../admin', '/%2e%2e/admin', 'x/..\\..\\admin']) {
      next = bad;
      invalid(await send(g.url, '/v1/chat/completions'));
    }
    const noBase = await gw([chan(1, up, { baseUrl: up.url })], {}, { path: () => '//evil.example/x' });
    invalid(await send(noBase.url, '/v1/chat/completions'));
    expect(up.requests).toHaveLength(0);
    next = '/responses?key=caller&a=1';
    const r = await post(g.url, { model: MODEL, input: 'hi' }, auth);
    expect(r.status).toBe(200);
    expect(up.requests[0].path).toBe('/v1/responses?a=1');
  });
});
