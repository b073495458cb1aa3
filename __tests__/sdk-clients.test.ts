// The example gateway (examples/gateway) driven by the official SDKs, as a user of each would:
// OpenAI (chat, streaming, embeddings, an Azure channel), Anthropic (messages, streaming, a Claude
// Code session) and Google Gen AI (generateContent, streaming, a mapped model). The mocks behind it
// accept only their channels' keys in their protocol's header (401 otherwise), and the tests check
// what each mock saw: the right header with the channel key, never the caller's token.
//
// 429s of two kinds: the distributor's own (`channels_saturated`, every channel of the model at its
// `limits`), and an upstream 429 passed through once every channel of the model is exhausted.
import Anthropic from '@anthropic-ai/sdk';
import { ApiError, GoogleGenAI } from '@google/genai';
import { afterAll, beforeAll, describe, expect, test } from '@jest/globals';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import OpenAI from 'openai';
import { Agent, request } from 'undici';
import { startGateway, type Gateway } from '../examples/gateway/server';
import { startMockUpstream, type MockRequestRecord, type MockUpstream } from '../examples/gateway/mock-upstream';

const TOKEN = 'sk-demo-alice';
const FAILOVER = 'sk-demo-failover';
const CHANNEL_KEYS = {
  azure: 'azure-upstream-key-east',
  embed: 'sk-upstream-embed',
  gemini: 'AIza-upstream-gemini',
  claudeA: ['sk-ant-upstream-a0', 'sk-ant-upstream-a1'],
  claudeB: 'sk-ant-upstream-b',
};

let gw: Gateway;
let dir: string;
const client = new Agent({ keepAliveTimeout: 1000 });

beforeAll(async () => {
  // channels.json as shipped, plus one channel per protocol whose upstream always answers 429
  const file = JSON.parse(readFileSync(path.join(__dirname, '..', 'examples', 'gateway', 'channels.json'), 'utf8')) as {
    mocks: Record<string, Record<string, unknown>>; channels: Array<Record<string, unknown>>;
  };
  const limited = { failRate: 1, failStatus: 429, retryAfter: '7' };
  file.mocks['limit-openai'] = { ...limited };
  file.mocks['limit-claude'] = { ...limited, protocol: 'anthropic' };
  file.mocks['limit-gemini'] = { ...limited, protocol: 'gemini' };
  file.channels.push(
    { id: 101, name: 'limit-openai', group: 'default', models: 'gpt-limited', baseUrl: 'mock://limit-openai/v1', key: 'sk-upstream-limit' },
    { id: 102, name: 'limit-claude', type: 'anthropic', group: 'default', models: 'claude-limited', baseUrl: 'mock://limit-claude/v1', key: 'sk-ant-upstream-limit' },
    { id: 103, name: 'limit-gemini', type: 'gemini', group: 'default', models: 'gemini-limited', baseUrl: 'mock://limit-gemini/v1beta', key: 'AIza-upstream-limit' },
    // limits: { rpm: 1 }: the second request of a minute finds every channel at its limit, and the distributor answers 429 itself
    { id: 104, name: 'rpm-openai', group: 'default', models: 'gpt-rpm1', baseUrl: 'mock://alpha/v1', key: 'sk-upstream-alpha', limits: { rpm: 1 } },
    { id: 105, name: 'rpm-claude', type: 'anthropic', group: 'default', models: 'claude-rpm1', baseUrl: 'mock://claude-a/v1', key: 'sk-ant-upstream-a0', limits: { rpm: 1 } },
    { id: 106, name: 'rpm-gemini', type: 'gemini', group: 'default', models: 'gemini-rpm1', baseUrl: 'mock://gemini/v1beta', key: 'AIza-upstream-gemini', limits: { rpm: 1 } },
  );
  dir = mkdtempSync(path.join(os.tmpdir(), 'sdk-clients-'));
  writeFileSync(path.join(dir, 'channels.json'), JSON.stringify(file));
  gw = await startGateway({ port: 0, env: { CHANNELS_FILE: path.join(dir, 'channels.json') } });
});

afterAll(async () => {
  await gw?.close();
  await client.close();
  rmSync(dir, { recursive: true, force: true });
});

const openai = (apiKey = TOKEN) => new OpenAI({ apiKey, baseURL: `${gw.url}/v1`, maxRetries: 0 });
const anthropic = (apiKey = TOKEN, defaultHeaders?: Record<string, string>) => new Anthropic({ apiKey, baseURL: gw.url, maxRetries: 0, defaultHeaders });
const gemini = (apiKey = TOKEN) => new GoogleGenAI({ apiKey, httpOptions: { baseUrl: gw.url } });

/** The requests a mock received from here on (its record keeps the last 100). */
function watch(name: string): () => MockRequestRecord[] {
  const m = gw.mocks[name];
  const before = m.requests.length;
  const first = m.requests[before - 1];
  return () => (first ? m.requests.slice(m.requests.indexOf(first) + 1) : [...m.requests]);
}

/** Every header value of a request, for "the caller's token is not in it". */
const headerText = (r: MockRequestRecord) => JSON.stringify(r.headers) + r.path;

describe('OpenAI SDK', () => {
  test('chat: non-streaming and streaming; the upstream saw its channel key as a Bearer token', async () => {
    const c = openai();
    const done = await c.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }] });
    expect(done.choices[0].message.content).toMatch(/^Hello from (alpha|beta|flaky)$/);
    const stream = await c.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true } });
    let text = '';
    let usage: OpenAI.CompletionUsage | null | undefined;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta?.content ?? '';
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toMatch(/^Hello from (alpha|beta|flaky)$/);
    expect(usage?.prompt_tokens).toBeGreaterThan(0);
    const who = /from (\w+)/.exec(text)![1];
    const last = gw.mocks[who].stats.last!;
    expect(last.headers.authorization).toBe(`Bearer sk-upstream-${who}`);
    expect(headerText(last)).not.toContain(TOKEN);
  });

  test('embeddings (the SDK asks for base64 and decodes it)', async () => {
    const seen = watch('embed');
    const r = await openai().embeddings.create({ model: 'text-embedding-3-small', input: ['one', 'two'] });
    expect(r.data).toHaveLength(2);
    expect(r.data[0].embedding).toHaveLength(8);
    expect(r.data[0].embedding.every((x) => Number.isFinite(x))).toBe(true);
    expect(r.usage.prompt_tokens).toBeGreaterThan(0);
    expect(seen().map((q) => q.headers.authorization)).toEqual([`Bearer ${CHANNEL_KEYS.embed}`]);
  });

  test('an Azure channel behind the OpenAI API: deployment path of the mapped model, api-version, api-key', async () => {
    const seen = watch('azure');
    const c = openai();
    const r = await c.chat.completions.create({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'Hi' }] });
    expect(r.choices[0].message.content).toBe('Hello from azure');
    const stream = await c.chat.completions.create({ model: 'gpt-4.1', messages: [{ role: 'user', content: 'Hi' }], stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
    expect(text).toBe('Hello from azure');
    const got = seen();
    expect(got.map((q) => q.path)).toEqual(Array(2).fill('/openai/deployments/gpt41-prod/chat/completions?api-version=2024-10-21'));
    for (const q of got) {
      expect(q.headers['api-key']).toBe(CHANNEL_KEYS.azure);
      expect(q.headers.authorization).toBeUndefined();
      expect(JSON.parse(q.body).model).toBe('gpt41-prod');
    }
  });

  test('failover before the first byte: dead (500) -> offline (connection refused) -> rescue, the call succeeds', async () => {
    const r = await openai(FAILOVER).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi' }] }).withResponse();
    expect(r.data.choices[0].message.content).toBe('Hello from rescue');
    expect(r.response.headers.get('x-distributor-trace')).toMatch(/upstream 500 ch=4 -> retry ch=5 -> upstream error ch=5 -> retry ch=6$/);
  });

  test('503 without a channel (unknown model): InternalServerError', async () => {
    const e = await openai().chat.completions.create({ model: 'gpt-unknown', messages: [] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.InternalServerError);
    expect((e as InstanceType<typeof OpenAI.APIError>).status).toBe(503);
    expect((e as InstanceType<typeof OpenAI.APIError>).code).toBe('model_not_found');
  });

  test('429 passed through from an upstream once retries are exhausted: RateLimitError with Retry-After', async () => {
    const e = await openai().chat.completions.create({ model: 'gpt-limited', messages: [] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.RateLimitError);
    expect((e as InstanceType<typeof OpenAI.APIError>).headers?.get('retry-after')).toBe('7');
    expect(gw.mocks['limit-openai'].stats.last!.headers.authorization).toBe('Bearer sk-upstream-limit');
  });
});

describe('429 from the distributor itself (limits: { rpm: 1 }, channels_saturated)', () => {
  test('OpenAI SDK: RateLimitError with code channels_saturated and Retry-After', async () => {
    await openai().chat.completions.create({ model: 'gpt-rpm1', messages: [] });
    const e = await openai().chat.completions.create({ model: 'gpt-rpm1', messages: [] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.RateLimitError);
    expect((e as InstanceType<typeof OpenAI.APIError>).code).toBe('channels_saturated');
    expect(Number((e as InstanceType<typeof OpenAI.APIError>).headers?.get('retry-after'))).toBeGreaterThan(0);
  });

  test('Anthropic SDK: RateLimitError', async () => {
    await anthropic().messages.create({ model: 'claude-rpm1', max_tokens: 1, messages: [] });
    const e = await anthropic().messages.create({ model: 'claude-rpm1', max_tokens: 1, messages: [] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Anthropic.RateLimitError);
    expect(JSON.stringify((e as InstanceType<typeof Anthropic.APIError>).error)).toContain('channels_saturated');
  });

  test('Google Gen AI SDK: ApiError status 429', async () => {
    await gemini().models.generateContent({ model: 'gemini-rpm1', contents: 'Hi' });
    const e = await gemini().models.generateContent({ model: 'gemini-rpm1', contents: 'Hi' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(429);
    expect((e as ApiError).message).toContain('channels_saturated');
  });
});

describe('Anthropic SDK', () => {
  test('messages: non-streaming and streaming (message_start ... message_stop); the upstream saw x-api-key with its channel key', async () => {
    const seenA = watch('claude-a');
    const seenB = watch('claude-b');
    const c = anthropic();
    const m = await c.messages.create({ model: 'claude-sonnet-4', max_tokens: 64, messages: [{ role: 'user', content: 'Hi' }] });
    expect(m.content[0]).toMatchObject({ type: 'text', text: expect.stringMatching(/^Hello from claude-[ab]$/) });
    expect(m.usage.input_tokens).toBeGreaterThan(0);
    const events: string[] = [];
    const stream = c.messages.stream({ model: 'claude-sonnet-4', max_tokens: 64, messages: [{ role: 'user', content: 'Hi' }] });
    stream.on('streamEvent', (ev) => events.push(ev.type));
    const final = await stream.finalMessage();
    expect(final.content[0]).toMatchObject({ type: 'text', text: expect.stringMatching(/^Hello from claude-[ab]$/) });
    expect(final.usage.output_tokens).toBe(4);
    expect(events[0]).toBe('message_start');
    expect(events).toContain('content_block_delta');
    expect(events.slice(-2)).toEqual(['message_delta', 'message_stop']);
    const got = [...seenA(), ...seenB()];
    expect(got).toHaveLength(2);
    for (const q of got) {
      expect([...CHANNEL_KEYS.claudeA, CHANNEL_KEYS.claudeB]).toContain(q.headers['x-api-key']);
      expect(q.headers['anthropic-version']).toMatch(/^\d{4}-\d\d-\d\d$/); // the SDK's own, forwarded
      expect(q.headers.authorization).toBeUndefined();
      expect(headerText(q)).not.toContain(TOKEN);
    }
  });

  test('a Claude Code session (X-Claude-Code-Session-Id) stays on one channel and key; the upstream cache hits from its second request', async () => {
    const combos = new Set<string>();
    for (let s = 0; s < 12; s++) {
      const session = `cc-session-${s}-${Date.now()}`;
      const c = anthropic(TOKEN, { 'X-Claude-Code-Session-Id': session });
      const served = new Set<string>();
      for (let i = 0; i < 4; i++) {
        const { data, response } = await c.messages.create({ model: 'claude-sonnet-4', max_tokens: 16, messages: [{ role: 'user', content: 'Refactor this function, please.' }] }).withResponse();
        if (i > 0) {
          expect(response.headers.get('x-distributor-trace')).toMatch(/^affinity:hit/);
          expect(data.usage.cache_read_input_tokens).toBeGreaterThan(0);
        }
        const who = /from (claude-[ab])/.exec((data.content[0] as { text: string }).text)![1];
        const q = gw.mocks[who].requests.filter((r) => r.headers['x-claude-code-session-id'] === session).pop()!;
        served.add(`${who}|${String(q.headers['x-api-key'])}`);
      }
      expect([...served]).toHaveLength(1);
      combos.add([...served][0]);
    }
    // the sessions spread over the channels and keys: the stickiness above is the pin, not a single choice
    expect(combos.size).toBeGreaterThan(1);
  });

  test('failover before the first byte (529 -> connection refused -> rescue), non-streaming and streaming', async () => {
    const c = anthropic(FAILOVER);
    const m = await c.messages.create({ model: 'claude-sonnet-4', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] });
    expect(m.content[0]).toMatchObject({ text: 'Hello from claude-b' });
    const text = await c.messages.stream({ model: 'claude-sonnet-4', max_tokens: 16, messages: [{ role: 'user', content: 'Hi' }] }).finalText();
    expect(text).toBe('Hello from claude-b');
    expect(gw.mocks['claude-dead'].stats.failed).toBeGreaterThanOrEqual(1);
    expect(gw.mocks['claude-b'].stats.last!.headers['x-api-key']).toBe('sk-ant-upstream-rescue');
  });

  test('503 without a channel (unknown model): ServiceUnavailableError', async () => {
    const e = await anthropic().messages.create({ model: 'claude-unknown', max_tokens: 1, messages: [] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Anthropic.ServiceUnavailableError);
    expect(e).toBeInstanceOf(Anthropic.InternalServerError);
    expect((e as InstanceType<typeof Anthropic.APIError>).status).toBe(503);
  });

  test('429 passed through from an upstream once retries are exhausted: RateLimitError carrying Anthropic\'s error type', async () => {
    const e = await anthropic().messages.create({ model: 'claude-limited', max_tokens: 1, messages: [] }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(Anthropic.RateLimitError);
    expect((e as InstanceType<typeof Anthropic.APIError>).error).toMatchObject({ type: 'error', error: { type: 'rate_limit_error' } });
    expect(gw.mocks['limit-claude'].stats.last!.headers['x-api-key']).toBe('sk-ant-upstream-limit');
  });
});

describe('Google Gen AI SDK', () => {
  test('generateContent and generateContentStream (?alt=sse); the upstream saw x-goog-api-key with its channel key', async () => {
    const seen = watch('gemini');
    const ai = gemini();
    const r = await ai.models.generateContent({ model: 'gemini-2.5-flash', contents: 'Hi there' });
    expect(r.text).toBe('Hello from gemini');
    expect(r.usageMetadata?.promptTokenCount).toBeGreaterThan(0);
    let text = '';
    let cached: number | undefined;
    for await (const chunk of await ai.models.generateContentStream({ model: 'gemini-2.5-flash', contents: 'Hi there' })) {
      text += chunk.text ?? '';
      if (chunk.usageMetadata) cached = chunk.usageMetadata.cachedContentTokenCount;
    }
    expect(text).toBe('Hello from gemini');
    expect(cached).toBeGreaterThan(0); // same key and prefix: the mock's implicit cache hit
    const got = seen();
    expect(got.map((q) => q.path)).toEqual(['/v1beta/models/gemini-2.5-flash:generateContent', '/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse']);
    for (const q of got) {
      expect(q.headers['x-goog-api-key']).toBe(CHANNEL_KEYS.gemini);
      expect(headerText(q)).not.toContain(TOKEN);
    }
  });

  test('a mapped model: the path\'s model segment is the upstream name', async () => {
    const seen = watch('gemini');
    const r = await gemini().models.generateContent({ model: 'gemini-flash-latest', contents: 'Hi' });
    expect(r.text).toBe('Hello from gemini');
    expect(seen().map((q) => q.path)).toEqual(['/v1beta/models/gemini-2.5-flash:generateContent']);
  });

  test('failover before the first byte (503 -> connection refused -> rescue), streaming', async () => {
    let text = '';
    for await (const chunk of await gemini(FAILOVER).models.generateContentStream({ model: 'gemini-2.5-flash', contents: 'Hi' })) text += chunk.text ?? '';
    expect(text).toBe('Hello from gemini');
    expect(gw.mocks['gemini-dead'].stats.failed).toBeGreaterThanOrEqual(1);
    expect(gw.mocks.gemini.stats.last!.headers['x-goog-api-key']).toBe('AIza-upstream-gemini-rescue');
  });

  test('503 without a channel (unknown model): ApiError status 503', async () => {
    const e = await gemini().models.generateContent({ model: 'gemini-unknown', contents: 'Hi' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(503);
  });

  test('429 passed through from an upstream once retries are exhausted: ApiError status 429 (RESOURCE_EXHAUSTED)', async () => {
    const e = await gemini().models.generateContent({ model: 'gemini-limited', contents: 'Hi' }).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ApiError);
    expect((e as ApiError).status).toBe(429);
    expect((e as ApiError).message).toContain('RESOURCE_EXHAUSTED');
    expect(gw.mocks['limit-gemini'].stats.last!.headers['x-goog-api-key']).toBe('AIza-upstream-limit');
  });
});

describe('hostile tenants and strict mocks', () => {
  const CALLER = 'tenant-own-provider-key-31337';
  const creds = { authorization: `Bearer ${TOKEN}`, 'x-api-key': CALLER, 'api-key': CALLER, 'x-goog-api-key': CALLER, 'content-type': 'application/json' };
  const cases: Array<[string, string, string, Record<string, unknown>]> = [
    ['openai', 'embed', '/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' }],
    ['azure', 'azure', '/v1/chat/completions', { model: 'gpt-4.1', messages: [] }],
    ['anthropic', 'claude-a|claude-b', '/v1/messages', { model: 'claude-sonnet-4', max_tokens: 1, messages: [] }],
    ['gemini', 'gemini', '/v1beta/models/gemini-2.5-flash:generateContent', { contents: [] }],
  ];
  test.each(cases)('%s channel: the caller\'s authorization, x-api-key, api-key, x-goog-api-key and ?key= never reach the upstream', async (_type, mocks, route, body) => {
    const seen = mocks.split('|').map(watch);
    const r = await request(`${gw.url}${route}?key=${CALLER}&x=1`, { method: 'POST', headers: creds, body: JSON.stringify(body), dispatcher: client });
    const text = await r.body.text();
    expect(r.statusCode).toBe(200); // a leaked credential would have been a 401 from the strict mock
    expect(text).toMatch(/Hello from|"object":"list"/);
    const got = seen.flatMap((f) => f());
    expect(got).toHaveLength(1);
    expect(headerText(got[0])).not.toContain(CALLER);
    expect(headerText(got[0])).not.toContain(TOKEN);
  });

  test('the mocks are strict: a caller credential next to the channel key, or a wrong key, is a 401 in the provider\'s shape (SDK error classes)', async () => {
    const strict: MockUpstream[] = [];
    try {
      const claude = await startMockUpstream({ protocol: 'anthropic', keys: ['sk-ant-good'] });
      const goog = await startMockUpstream({ protocol: 'gemini', keys: ['AIza-good'] });
      const oai = await startMockUpstream({ keys: ['sk-good'] });
      strict.push(claude, goog, oai);
      const e1 = await new Anthropic({ apiKey: 'sk-ant-good', baseURL: claude.url, maxRetries: 0, defaultHeaders: { authorization: `Bearer ${TOKEN}` } })
        .messages.create({ model: 'claude-sonnet-4', max_tokens: 1, messages: [] }).catch((x: unknown) => x);
      expect(e1).toBeInstanceOf(Anthropic.AuthenticationError);
      expect((e1 as InstanceType<typeof Anthropic.APIError>).error).toMatchObject({ type: 'error', error: { type: 'authentication_error' } });
      const e2 = await new GoogleGenAI({ apiKey: 'AIza-wrong', httpOptions: { baseUrl: goog.url } }).models.generateContent({ model: 'gemini-2.5-flash', contents: 'x' }).catch((x: unknown) => x);
      expect((e2 as ApiError).status).toBe(401);
      expect((e2 as ApiError).message).toContain('UNAUTHENTICATED');
      const e3 = await new OpenAI({ apiKey: 'sk-good', baseURL: `${oai.url}/v1`, maxRetries: 0, defaultHeaders: { 'x-api-key': 'leaked' } })
        .chat.completions.create({ model: 'gpt-4o', messages: [] }).catch((x: unknown) => x);
      expect(e3).toBeInstanceOf(OpenAI.AuthenticationError);
      expect(claude.stats.rejected + goog.stats.rejected + oai.stats.rejected).toBe(3);
      const ok = await new OpenAI({ apiKey: 'sk-good', baseURL: `${oai.url}/v1`, maxRetries: 0 }).chat.completions.create({ model: 'gpt-4o', messages: [] });
      expect(ok.choices[0].message.content).toMatch(/^Hello from /);
    } finally {
      await Promise.all(strict.map((m) => m.close()));
    }
  });
});
