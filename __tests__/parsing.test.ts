// Request parsing (docs/channels-and-selection.md), following new-api's extraction rules.
// Adaptations: errors are {error:{message,type:'distributor_error',code}} with codes
// invalid_request / model_required / request_too_large / group_forbidden instead of new-api's
// type 'new_api_error' and empty code; messages carry no "(request id: ...)" suffix.
import { afterAll, describe, expect, test } from '@jest/globals';
import express, { type Request, type Response } from 'express';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import request from 'supertest';
import { distributor, type DistributorHandler, type DistributorOptions } from '../lib';
import { createApp, ctx, memoryLogger, type TestApp } from './helpers/create-app';

const CHANNELS = [
  { id: 1, models: 'gpt-4o,gpt-4o-realtime,x,gemini-2.0-flash,foo,dall-e,tts-1,whisper-1,text-moderation-stable,gpt-4o-transcribe,from-extract' },
  { id: 2, group: 'vip', models: 'gpt-4o' },
];

const made: DistributorHandler[] = [];
function app(options: Partial<DistributorOptions> = {}, extra?: Parameters<typeof createApp>[1]): TestApp {
  const t = createApp({ channels: CHANNELS, ...options }, extra);
  made.push(t.mw);
  return t;
}
function mw(options: Partial<DistributorOptions> = {}): DistributorHandler {
  const m = distributor({ channels: CHANNELS, logger: memoryLogger(), ...options });
  made.push(m);
  return m;
}
afterAll(async () => {
  await Promise.all(made.map((m) => m.shutdown()));
});

const base = app();

function expectError(body: unknown, code: string, message?: string | RegExp): void {
  expect(body).toEqual({ error: { message: expect.any(String), type: 'distributor_error', code } });
  const msg = (body as { error: { message: string } }).error.message;
  if (typeof message === 'string') expect(msg).toContain(message);
  else if (message) expect(msg).toMatch(message);
}

function multipart(fields: Record<string, string>, file?: { name: string; content: Buffer }): { body: Buffer; type: string } {
  const boundary = '----ecdtestboundary7MA4YWxk';
  const parts: Buffer[] = [];
  for (const [k, v] of Object.entries(fields)) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${k}"\r\n\r\n${v}\r\n`));
  }
  if (file) {
    parts.push(Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${file.name}"; filename="a.wav"\r\nContent-Type: audio/wav\r\n\r\n`));
    parts.push(file.content, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(parts), type: `multipart/form-data; boundary=${boundary}` };
}

describe('S1/S2: JSON body errors -> 400 invalid_request (adapted: code invalid_request, type distributor_error)', () => {
  test('S1: {"model":123} -> 400 "field model must be a string"', async () => {
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', 'application/json').send('{"model":123}').expect(400);
    expectError(r.body, 'invalid_request', 'field model must be a string');
  });

  test('non-string group -> 400 "field group must be a string"', async () => {
    const r = await request(base.app).post('/v1/chat/completions').send({ model: 'gpt-4o', group: ['vip'] }).expect(400);
    expectError(r.body, 'invalid_request', 'field group must be a string');
  });

  test('model null is treated as absent (-> model_required, not invalid_request)', async () => {
    const r = await request(base.app).post('/v1/chat/completions').send({ model: null }).expect(400);
    expectError(r.body, 'model_required');
  });

  test('S2: body "{bad" -> 400 "invalid JSON request body"', async () => {
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', 'application/json').send('{bad').expect(400);
    expectError(r.body, 'invalid_request', 'invalid JSON request body');
  });

  test.each([['[1,2]'], ['"gpt-4o"'], ['5'], ['null'], ['true']])('non-object JSON body %s -> 400 invalid_request', async (raw) => {
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', 'application/json').send(raw).expect(400);
    expectError(r.body, 'invalid_request');
  });

  test('an already-parsed non-object JSON body (express.json() before) -> 400 invalid_request', async () => {
    const t = app({}, { before: (a) => a.use(express.json({ strict: false })) });
    const r = await request(t.app).post('/v1/chat/completions').set('content-type', 'application/json').send('[{"model":"gpt-4o"}]').expect(400);
    expectError(r.body, 'invalid_request');
  });

  test('an empty JSON body has no fields -> 400 model_required', async () => {
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', 'application/json').send('').expect(400);
    expectError(r.body, 'model_required');
  });
});

describe('S3 / S57: missing model -> 400 model_required', () => {
  test('S3: {"messages":[]} -> 400 "Model name not specified, model name cannot be empty"', async () => {
    const r = await request(base.app).post('/v1/chat/completions').send({ messages: [] }).expect(400);
    expectError(r.body, 'model_required', 'Model name not specified, model name cannot be empty');
  });

  test('S57: Content-Type text/plain parses as no model (no parse error) -> 400 model_required', async () => {
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', 'text/plain').send('{"model":"gpt-4o"}').expect(400);
    expectError(r.body, 'model_required');
  });
});

describe('S4: Gemini path model', () => {
  test('/v1beta/models/gemini-2.0-flash:generateContent -> model gemini-2.0-flash', async () => {
    const r = await request(base.app).post('/v1beta/models/gemini-2.0-flash:generateContent').send({ contents: [] }).expect(200);
    expect(r.body.distribution.model).toBe('gemini-2.0-flash');
  });

  test('/v1/models/foo (no colon) -> model foo', async () => {
    const r = await request(base.app).get('/v1/models/foo').expect(200);
    expect(r.body.distribution.model).toBe('foo');
  });

  test('the path model wins over a body model', async () => {
    const r = await request(base.app).post('/v1beta/models/gemini-2.0-flash:streamGenerateContent').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.distribution.model).toBe('gemini-2.0-flash');
  });
});

describe('S5: realtime query model', () => {
  test('/v1/realtime?model=gpt-4o-realtime with body model x -> gpt-4o-realtime', async () => {
    const r = await request(base.app).post('/v1/realtime?model=gpt-4o-realtime').send({ model: 'x' }).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o-realtime');
  });

  test('without the query the body model is used', async () => {
    const r = await request(base.app).post('/v1/realtime').send({ model: 'x' }).expect(200);
    expect(r.body.distribution.model).toBe('x');
  });
});

describe('S6: path defaults when no model was given', () => {
  test.each([
    ['/v1/images/generations', 'dall-e'],
    ['/v1/audio/speech', 'tts-1'],
    ['/v1/moderations', 'text-moderation-stable'],
    ['/v1/audio/translations', 'whisper-1'],
  ])('%s without model -> %s', async (path, model) => {
    const r = await request(base.app).post(path).send({ input: 'hi' }).expect(200);
    expect(r.body.distribution.model).toBe(model);
  });

  test('multipart /v1/audio/transcriptions without model -> whisper-1', async () => {
    const mp = multipart({ language: 'en' }, { name: 'file', content: Buffer.alloc(64, 1) });
    const r = await request(base.app).post('/v1/audio/transcriptions').set('content-type', mp.type).send(mp.body).expect(200);
    expect(r.body.distribution.model).toBe('whisper-1');
  });

  test('a body model beats the default', async () => {
    const r = await request(base.app).post('/v1/images/generations').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o');
  });

  test('no default for other paths', async () => {
    const r = await request(base.app).post('/v1/embeddings').send({ input: 'x' }).expect(400);
    expectError(r.body, 'model_required');
  });
});

describe('body reading: bodyLimit, express.json() before, parsers after', () => {
  test('over bodyLimit (Content-Length) -> 413 request_too_large', async () => {
    const t = app({ bodyLimit: 100 });
    const r = await request(t.app).post('/v1/chat/completions').send({ model: 'gpt-4o', pad: 'x'.repeat(500) }).expect(413);
    expectError(r.body, 'request_too_large');
  });

  test("bodyLimit as a string ('1kb') is honoured: 1000 bytes pass, 2000 bytes get 413", async () => {
    const t = app({ bodyLimit: '1kb' });
    const small = JSON.stringify({ model: 'gpt-4o', pad: 'x'.repeat(1000 - 30) });
    await request(t.app).post('/v1/chat/completions').set('content-type', 'application/json').send(small).expect(200);
    const r = await request(t.app).post('/v1/chat/completions').send({ model: 'gpt-4o', pad: 'x'.repeat(2000) }).expect(413);
    expectError(r.body, 'request_too_large');
  });

  test('over bodyLimit with a chunked body (no Content-Length) -> 413', async () => {
    const t = app({ bodyLimit: 200 });
    const server = t.app.listen(0);
    try {
      const { port } = server.address() as AddressInfo;
      const res = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const rq = http.request({ port, method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' } }, (rs) => {
          let data = '';
          rs.on('data', (c) => (data += c));
          rs.on('end', () => resolve({ status: rs.statusCode ?? 0, body: data }));
        });
        rq.on('error', reject);
        rq.write('{"model":"gpt-4o","pad":"');
        for (let i = 0; i < 10; i++) rq.write('y'.repeat(100));
        rq.end('"}');
      });
      expect(res.status).toBe(413);
      expectError(JSON.parse(res.body), 'request_too_large');
    } finally {
      server.close();
    }
  });

  test("the distributor's own reading leaves req.body (parsed) and req.rawBody (Buffer)", async () => {
    const payload = JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'héllo' }] });
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', 'application/json').send(payload).expect(200);
    expect(r.body.body).toEqual(JSON.parse(payload));
    expect(r.body.rawBodyLength).toBe(Buffer.byteLength(payload));
  });

  test('express.json() mounted before: req.body is used as is and the body is not read again', async () => {
    const t = app({}, {
      before: (a) => {
        a.use(express.json());
        // rewrite the parsed body: the distributor must use this object, not re-parse the stream
        a.use((req, _res, next) => {
          if (req.body && typeof req.body === 'object') req.body.model = 'gpt-4o';
          next();
        });
      },
    });
    const r = await request(t.app).post('/v1/chat/completions').send({ model: 'not-served' }).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o');
    expect(r.body.rawBodyLength).toBeNull();
    expect(r.body.body).toEqual({ model: 'gpt-4o' });
  });

  test('express.json() mounted before: a non-string model in the parsed body is still 400', async () => {
    const t = app({}, { before: (a) => a.use(express.json()) });
    const r = await request(t.app).post('/v1/chat/completions').send({ model: { name: 'gpt-4o' } }).expect(400);
    expectError(r.body, 'invalid_request', 'field model must be a string');
  });

  test('express.raw() / express.text() mounted before: the model is read from the Buffer / string, req.body is left as is', async () => {
    const raw = app({}, { before: (a) => a.use(express.raw({ type: '*/*' })) });
    const payload = JSON.stringify({ model: 'gpt-4o', stream: true });
    const r = await request(raw.app).post('/v1/chat/completions').set('content-type', 'application/json').send(payload).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o');
    expect(r.body.body).toEqual({ type: 'Buffer', data: [...Buffer.from(payload)] });
    expect(r.body.rawBodyLength).toBeNull();
    const bad = await request(raw.app).post('/v1/chat/completions').set('content-type', 'application/json').send('{bad').expect(400);
    expectError(bad.body, 'invalid_request', 'invalid JSON request body');
    const form = await request(raw.app).post('/v1/chat/completions').type('form').send('model=gpt-4o').expect(200);
    expect(form.body.distribution.model).toBe('gpt-4o');
    const text = app({}, { before: (a) => a.use(express.text({ type: 'application/json' })) });
    const t = await request(text.app).post('/v1/chat/completions').set('content-type', 'application/json').send(payload).expect(200);
    expect(t.body.distribution.model).toBe('gpt-4o');
    expect(t.body.body).toBe(payload);
  });

  test('a parser mounted AFTER the distributor skips the body (marked read) and keeps req.body', async () => {
    const a = express();
    a.use(mw());
    a.use((req: Request, res: Response, next) => {
      res.locals.bodyBefore = req.body;
      next();
    });
    a.use(express.json());
    a.use(express.urlencoded({ extended: false }));
    a.post(/.*/, (req: Request, res: Response) => {
      res.json({
        same: req.body === res.locals.bodyBefore,
        marked: (req as unknown as { _body?: boolean })._body === true,
        body: req.body,
        raw: req.rawBody?.toString('utf8') ?? null,
        channel: res.locals.channel?.id ?? null,
      });
    });
    const payload = JSON.stringify({ model: 'gpt-4o', n: 1 });
    const r = await request(a).post('/v1/chat/completions').set('content-type', 'application/json').send(payload).expect(200);
    expect(r.body).toEqual({ same: true, marked: true, body: { model: 'gpt-4o', n: 1 }, raw: payload, channel: 1 });
  });
});

describe('form and multipart bodies', () => {
  test('form body: the model field is read, req.body and req.rawBody are left', async () => {
    const r = await request(base.app).post('/v1/images/edits').type('form').send('model=gpt-4o&prompt=cat').expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o');
    expect(r.body.body).toEqual({ model: 'gpt-4o', prompt: 'cat' });
    expect(r.body.rawBodyLength).toBe('model=gpt-4o&prompt=cat'.length);
  });

  test('multipart without options.multipart is not consumed: a later consumer gets the whole stream', async () => {
    const a = express();
    a.use(mw());
    a.post(/.*/, (req: Request, res: Response) => {
      let n = 0;
      req.on('data', (c: Buffer) => (n += c.length));
      req.on('end', () => res.json({ streamed: n, model: res.locals.distribution?.model, rawBody: req.rawBody ? req.rawBody.length : null }));
    });
    const mp = multipart({ model: 'gpt-4o-transcribe' }, { name: 'file', content: Buffer.alloc(4096, 7) });
    const r = await request(a).post('/v1/audio/transcriptions').set('content-type', mp.type).send(mp.body).expect(200);
    expect(r.body).toEqual({ streamed: mp.body.length, model: 'whisper-1', rawBody: null });
  });

  test('multipart without options.multipart on a path with no default -> model_required', async () => {
    const mp = multipart({ model: 'gpt-4o' });
    const r = await request(base.app).post('/v1/chat/completions').set('content-type', mp.type).send(mp.body).expect(400);
    expectError(r.body, 'model_required');
  });

  test('multipart with options.multipart: buffered into req.rawBody and the model field read', async () => {
    const t = app({ multipart: true });
    const mp = multipart({ model: 'gpt-4o-transcribe', language: 'en' }, { name: 'file', content: Buffer.alloc(2048, 3) });
    const r = await request(t.app).post('/v1/audio/transcriptions').set('content-type', mp.type).send(mp.body).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o-transcribe');
    expect(r.body.rawBodyLength).toBe(mp.body.length);
  });

  test('multipart with options.multipart: the model field is found after a file part (a file named "model" is ignored)', async () => {
    const t = app({ multipart: true });
    const boundary = 'XyZ-boundary';
    const body = Buffer.concat([
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="model"; filename="model.bin"\r\nContent-Type: application/octet-stream\r\n\r\n`),
      Buffer.from([0, 1, 2, 13, 10, 45, 45, 3]),
      Buffer.from(`\r\n--${boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-transcribe\r\n--${boundary}--\r\n`),
    ]);
    const r = await request(t.app).post('/v1/audio/transcriptions').set('content-type', `multipart/form-data; boundary="${boundary}"`).send(body).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o-transcribe');
  });

  test('multipart with options.multipart over bodyLimit -> 413', async () => {
    const t = app({ multipart: true, bodyLimit: 1000 });
    const mp = multipart({ model: 'gpt-4o-transcribe' }, { name: 'file', content: Buffer.alloc(4096, 3) });
    const r = await request(t.app).post('/v1/audio/transcriptions').set('content-type', mp.type).send(mp.body).expect(413);
    expectError(r.body, 'request_too_large');
  });
});

describe('options.extractModel (replaces the built-in extractor; body reading happens first)', () => {
  test('sync string', async () => {
    const t = app({ extractModel: () => 'from-extract' });
    const r = await request(t.app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(r.body.distribution.model).toBe('from-extract');
  });

  test('async string reading the body the distributor parsed', async () => {
    const t = app({ extractModel: async (req) => (req.body as { engine: string }).engine });
    const r = await request(t.app).post('/v1/chat/completions').send({ engine: 'gpt-4o' }).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o');
  });

  test('object { model, group } (group honoured with allowBodyGroup)', async () => {
    const t = app({ allowBodyGroup: true, usableGroups: () => ['default', 'vip'], extractModel: () => ({ model: 'gpt-4o', group: 'vip' }) });
    const r = await request(t.app).post('/v1/chat/completions').send({}).expect(200);
    expect(r.body.distribution.model).toBe('gpt-4o');
    expect(r.body.distribution.selectedGroup).toBe('vip');
    expect(r.body.channel.id).toBe(2);
  });

  test('returning nothing -> model_required; a non-string model -> 400 invalid_request', async () => {
    const none = app({ extractModel: () => undefined });
    expectError((await request(none.app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(400)).body, 'model_required');
    const bad = app({ extractModel: () => ({ model: 5 as unknown as string }) });
    expectError((await request(bad.app).post('/v1/chat/completions').send({}).expect(400)).body, 'invalid_request');
  });
});

describe('options.shouldSelect', () => {
  test('false -> next() with selected false and no channel, no model needed', async () => {
    const t = app({ shouldSelect: (req) => !req.path.startsWith('/v1/videos') });
    const r = await request(t.app).get('/v1/videos/abc').expect(200);
    expect(r.body.channel).toBeNull();
    expect(r.body.distribution.selected).toBe(false);
    const sel = await request(t.app).post('/v1/chat/completions').send({ model: 'gpt-4o' }).expect(200);
    expect(sel.body.distribution.selected).toBe(true);
  });
});

describe("mounting at '/' or at '/v1' behaves the same (paths are req.originalUrl's pathname)", () => {
  const root = app();
  const v1 = app({}, { mount: '/v1' });
  test.each([
    ['post', '/v1/models/gemini-2.0-flash:generateContent', 'gemini-2.0-flash'],
    ['post', '/v1/images/generations', 'dall-e'],
    ['post', '/v1/realtime?model=gpt-4o-realtime', 'gpt-4o-realtime'],
    ['post', '/v1/moderations', 'text-moderation-stable'],
  ])('%s %s -> %s', async (_m, path, model) => {
    const a = await request(root.app).post(path).send({}).expect(200);
    const b = await request(v1.app).post(path).send({}).expect(200);
    expect(a.body.distribution.model).toBe(model);
    expect(b.body.distribution.model).toBe(model);
    expect(b.body.channel.id).toBe(a.body.channel.id);
  });
});

describe('body group (allowBodyGroup)', () => {
  test('ignored for routing without allowBodyGroup', async () => {
    const r = await request(base.app).post('/v1/chat/completions').send({ model: 'gpt-4o', group: 'vip' }).expect(200);
    expect(r.body.distribution.selectedGroup).toBe('default');
    expect(r.body.channel.id).toBe(1);
  });

  test('with allowBodyGroup: a group in usableGroups(userGroup) is used', async () => {
    const t = app({ allowBodyGroup: true, usableGroups: (g) => (g === 'gold' ? ['default', 'vip'] : ['default']) });
    const r = await request(t.app).post('/v1/chat/completions').set(ctx({ userGroup: 'gold' })).send({ model: 'gpt-4o', group: 'vip' }).expect(200);
    expect(r.body.distribution.group).toBe('vip');
    expect(r.body.channel.id).toBe(2);
  });

  test("with allowBodyGroup: the caller's own user group is allowed", async () => {
    const t = app({ allowBodyGroup: true, usableGroups: () => [] });
    const r = await request(t.app).post('/v1/chat/completions').set(ctx({ userGroup: 'vip' })).send({ model: 'gpt-4o', group: 'vip' }).expect(200);
    expect(r.body.channel.id).toBe(2);
  });

  test('S14 adapted: with allowBodyGroup a group outside usableGroups -> 403 group_forbidden', async () => {
    const t = app({ allowBodyGroup: true, usableGroups: () => ['default'] });
    const r = await request(t.app).post('/v1/chat/completions').set(ctx({ userGroup: 'default' })).send({ model: 'gpt-4o', group: 'vip' }).expect(403);
    expectError(r.body, 'group_forbidden');
  });
});
