// lib/relay/usage.ts: the usage parsers of the four providers' answers and the incremental SSE
// scanner relay() runs on streams as they pass (any chunk split, LF / CRLF / CR, hostile input).
import { describe, expect, test } from '@jest/globals';
import {
  JsonUsageCollector, SSE_USAGE_LINE_LIMIT, SseUsageScanner, isJsonContentType, mergeUsage, toUsageReport,
  usageFromJsonText, usageOfJson,
} from '../lib/relay/usage';
import { MAX_TOKEN_COUNT, tokenValue } from '../lib/affinity/usage';

const report = (v: unknown) => toUsageReport(usageOfJson(v));

/** Feeds `text` to a fresh scanner in the given pieces and returns its result. */
function scan(pieces: Array<string | Buffer>, limit?: number): ReturnType<SseUsageScanner['result']> {
  const s = new SseUsageScanner(limit);
  for (const p of pieces) s.push(Buffer.isBuffer(p) ? p : Buffer.from(p));
  return s.result();
}

const sse = (events: Array<{ event?: string; data: unknown }>, eol = '\n') =>
  events.map((e) => `${e.event ? `event: ${e.event}${eol}` : ''}data: ${typeof e.data === 'string' ? e.data : JSON.stringify(e.data)}${eol}${eol}`).join('');

// ---- the providers' streams ------------------------------------------------------------------

const chatStream = sse([
  { data: { id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: '' } }], usage: null } },
  { data: { id: 'c', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'the usage of words' } }], usage: null } },
  { data: { id: 'c', object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 1200, completion_tokens: 30, total_tokens: 1230, prompt_tokens_details: { cached_tokens: 1024 } } } },
  { data: '[DONE]' },
]);

const responsesStream = sse([
  { event: 'response.created', data: { type: 'response.created', response: { id: 'r', status: 'in_progress', usage: null } } },
  { event: 'response.output_text.delta', data: { type: 'response.output_text.delta', delta: 'Hi' } },
  { event: 'response.completed', data: { type: 'response.completed', response: { id: 'r', status: 'completed', usage: { input_tokens: 500, input_tokens_details: { cached_tokens: 384 }, output_tokens: 12, total_tokens: 512 } } } },
]);

const anthropicStream = sse([
  { event: 'message_start', data: { type: 'message_start', message: { id: 'm', type: 'message', role: 'assistant', usage: { input_tokens: 20, cache_creation_input_tokens: 100, cache_read_input_tokens: 3000, output_tokens: 1 } } } },
  { event: 'content_block_delta', data: { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } } },
  { event: 'ping', data: { type: 'ping' } },
  { event: 'message_delta', data: { type: 'message_delta', delta: { stop_reason: 'end_turn' }, usage: { output_tokens: 57 } } },
  { event: 'message_stop', data: { type: 'message_stop' } },
]);

const geminiStream = sse([
  { data: { candidates: [{ content: { parts: [{ text: 'a' }] } }], usageMetadata: { promptTokenCount: 800, candidatesTokenCount: 1, totalTokenCount: 801 } } },
  { data: { candidates: [{ content: { parts: [{ text: 'b' }] } }], usageMetadata: { promptTokenCount: 800, candidatesTokenCount: 9, cachedContentTokenCount: 700, totalTokenCount: 809 } } },
]);

const expected = {
  chat: { inputTokens: 1200, outputTokens: 30, cachedTokens: 1024 },
  responses: { inputTokens: 500, outputTokens: 12, cachedTokens: 384 },
  // Anthropic's input_tokens excludes cache reads and writes: they are added
  anthropic: { inputTokens: 3120, outputTokens: 57, cachedTokens: 3000, cacheWriteTokens: 100 },
  gemini: { inputTokens: 800, outputTokens: 9, cachedTokens: 700 },
};
const streams: Array<[keyof typeof expected, string]> = [['chat', chatStream], ['responses', responsesStream], ['anthropic', anthropicStream], ['gemini', geminiStream]];

describe('JSON answers', () => {
  test('OpenAI chat completion', () => {
    expect(report({ object: 'chat.completion', choices: [], usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13, prompt_tokens_details: { cached_tokens: 0 } } }))
      .toEqual({ inputTokens: 9, outputTokens: 4, cachedTokens: 0 });
    // no details: no cached count (unknown is not 0)
    expect(report({ usage: { prompt_tokens: 9, completion_tokens: 4 } })).toEqual({ inputTokens: 9, outputTokens: 4 });
  });

  test('OpenAI Responses object', () => {
    expect(report({ object: 'response', status: 'completed', usage: { input_tokens: 100, input_tokens_details: { cached_tokens: 80 }, output_tokens: 5, total_tokens: 105 } }))
      .toEqual({ inputTokens: 100, outputTokens: 5, cachedTokens: 80 });
  });

  test('Anthropic message: cache reads and writes counted into the input', () => {
    expect(report({ type: 'message', usage: { input_tokens: 10, cache_read_input_tokens: 90, cache_creation_input_tokens: 0, output_tokens: 3 } }))
      .toEqual({ inputTokens: 100, outputTokens: 3, cachedTokens: 90, cacheWriteTokens: 0 });
    expect(report({ type: 'message', usage: { input_tokens: 10, output_tokens: 3 } })).toEqual({ inputTokens: 10, outputTokens: 3 });
  });

  test('Gemini response, and a JSON array of stream chunks (the last count wins)', () => {
    expect(report({ candidates: [], usageMetadata: { promptTokenCount: 50, candidatesTokenCount: 7, cachedContentTokenCount: 40 } }))
      .toEqual({ inputTokens: 50, outputTokens: 7, cachedTokens: 40 });
    expect(report([{ usageMetadata: { promptTokenCount: 50, candidatesTokenCount: 1 } }, { candidates: [] }, { usageMetadata: { promptTokenCount: 50, candidatesTokenCount: 7 } }]))
      .toEqual({ inputTokens: 50, outputTokens: 7 });
  });

  test('no usage, or not an object: undefined', () => {
    for (const v of [null, undefined, 1, 'usage', [], {}, { usage: null }, { usage: 'lots' }, { usage: [1, 2] }, { usageMetadata: 5 }, { type: 'message_start' }, { type: 'response.completed', response: { usage: null } }]) {
      expect(report(v)).toBeUndefined();
    }
  });

  test('usageFromJsonText: bytes or text; invalid JSON and bodies without "usage" are not parsed', () => {
    expect(usageFromJsonText(Buffer.from('{"usage":{"prompt_tokens":3}}'))).toEqual({ inputTokens: 3 });
    expect(usageFromJsonText('{"usage":{"prompt_tokens":3}')).toBeUndefined();
    expect(usageFromJsonText('not json usage')).toBeUndefined();
    expect(usageFromJsonText('{"id":"x"}')).toBeUndefined();
  });

  test('content-type detection', () => {
    for (const ct of ['application/json', 'application/json; charset=utf-8', 'Application/JSON', 'application/problem+json']) expect(isJsonContentType(ct)).toBe(true);
    for (const ct of [undefined, '', 'text/plain', 'text/event-stream', 'application/jsonl', 'application/x-ndjson', ['application/json']]) expect(isJsonContentType(ct)).toBe(false);
  });

  test('JsonUsageCollector: parses the chunks at the end; past its cap it keeps nothing', () => {
    const body = Buffer.from(JSON.stringify({ choices: [{ message: { content: 'x'.repeat(1000) } }], usage: { prompt_tokens: 7, completion_tokens: 2 } }));
    const c = new JsonUsageCollector();
    for (let i = 0; i < body.length; i += 97) c.push(body.subarray(i, i + 97));
    expect(c.result()).toEqual({ inputTokens: 7, outputTokens: 2 });
    expect(c.result()).toBeUndefined(); // once
    const small = new JsonUsageCollector(100);
    small.push(body.subarray(0, 60));
    small.push(body.subarray(60));
    expect(small.result()).toBeUndefined();
    expect(new JsonUsageCollector().result()).toBeUndefined();
  });
});

describe('hostile counts', () => {
  test('only finite numbers in [0, MAX_TOKEN_COUNT] count (floored); strings, NaN, negatives, 1e308 are ignored', () => {
    expect(tokenValue(12.9)).toBe(12);
    expect(tokenValue(0)).toBe(0);
    expect(tokenValue(MAX_TOKEN_COUNT)).toBe(MAX_TOKEN_COUNT);
    for (const v of [-1, -0.5, 1e308, Infinity, -Infinity, NaN, MAX_TOKEN_COUNT + 1, '12', 'NaN', null, undefined, true, {}, [5]]) expect(tokenValue(v)).toBeUndefined();
    expect(report({ usage: { prompt_tokens: 'NaN', completion_tokens: -4, prompt_tokens_details: { cached_tokens: 1e308 } } })).toBeUndefined();
    expect(report({ usage: { prompt_tokens: '100', completion_tokens: 5 } })).toEqual({ outputTokens: 5 });
    // 1e999 parses to Infinity
    expect(usageFromJsonText('{"usage":{"prompt_tokens":1e999,"completion_tokens":2}}')).toEqual({ outputTokens: 2 });
  });

  test('cached never exceeds input; Anthropic sums stay within the cap', () => {
    expect(report({ usage: { prompt_tokens: 10, prompt_tokens_details: { cached_tokens: 500 } } })).toEqual({ inputTokens: 10, cachedTokens: 10 });
    expect(report({ usage: { input_tokens: MAX_TOKEN_COUNT, cache_read_input_tokens: MAX_TOKEN_COUNT } })).toEqual({ inputTokens: MAX_TOKEN_COUNT, cachedTokens: MAX_TOKEN_COUNT });
  });

  test('deeply nested JSON does not overflow the stack', () => {
    const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`;
    expect(() => usageFromJsonText(`{"usage":${deep}}`)).not.toThrow();
    expect(usageFromJsonText(`[${deep},{"usage":{"prompt_tokens":1}}]`)).toEqual({ inputTokens: 1 });
    expect(scan([`data: {"usage":${deep}}\n\n`], 1 << 20)).toBeUndefined();
  });

  test('mergeUsage: later counts win, absent ones keep the earlier', () => {
    expect(mergeUsage({ input: 1, cached: 1 }, { output: 2 })).toEqual({ input: 1, cached: 1, output: 2 });
    expect(mergeUsage(undefined, undefined)).toBeUndefined();
  });
});

describe('SseUsageScanner', () => {
  test.each(streams)('%s stream, in one chunk', (name, text) => {
    expect(scan([text])).toEqual(expected[name]);
  });

  test.each(streams)('%s stream, split at every byte position into two chunks', (name, text) => {
    const bytes = Buffer.from(text);
    for (let i = 0; i <= bytes.length; i++) expect([i, scan([bytes.subarray(0, i), bytes.subarray(i)])]).toEqual([i, expected[name]]);
  });

  test.each(streams)('%s stream, byte by byte and in random pieces', (name, text) => {
    const bytes = Buffer.from(text);
    expect(scan([...bytes].map((b) => Buffer.from([b])))).toEqual(expected[name]);
    let seed = 7;
    for (let round = 0; round < 50; round++) {
      const pieces: Buffer[] = [];
      for (let i = 0; i < bytes.length;) {
        seed = (seed * 1103515245 + 12345) % 2147483648;
        const n = 1 + (seed % 40);
        pieces.push(bytes.subarray(i, i + n));
        i += n;
      }
      expect(scan(pieces)).toEqual(expected[name]);
    }
  });

  test.each(['\r\n', '\r'])('line endings %j, split anywhere (a CR at the end of a chunk, its LF in the next)', (eol) => {
    const text = sse([{ event: 'message_start', data: { type: 'message_start', message: { usage: { input_tokens: 5, cache_read_input_tokens: 50 } } } }, { event: 'message_delta', data: { type: 'message_delta', usage: { output_tokens: 8 } } }], eol);
    const bytes = Buffer.from(text);
    const want = { inputTokens: 55, cachedTokens: 50, outputTokens: 8 };
    expect(scan([bytes])).toEqual(want);
    for (let i = 0; i <= bytes.length; i++) expect([i, scan([bytes.subarray(0, i), bytes.subarray(i)])]).toEqual([i, want]);
  });

  test('multi-line data, `data:` without a space, comments, ids, retry and unknown fields', () => {
    const text = [
      ': keep-alive comment with usage in it',
      'id: 1',
      'retry: 1000',
      'foo: bar',
      'data:{"choices":[],',
      'data: "usage":{"prompt_tokens":4,',
      'data: "completion_tokens":1}}',
      '',
      '',
    ].join('\n');
    expect(scan([text])).toEqual({ inputTokens: 4, outputTokens: 1 });
  });

  test('a final event without its blank line still counts', () => {
    expect(scan(['data: {"usage":{"prompt_tokens":4}}'])).toEqual({ inputTokens: 4 });
    expect(scan(['data: {"usage":{"prompt_tokens":4}}\n'])).toEqual({ inputTokens: 4 });
  });

  test('only events that mention usage are parsed', () => {
    const s = new SseUsageScanner();
    const deltas = sse(Array.from({ length: 200 }, (_, i) => ({ data: { choices: [{ delta: { content: `token ${i}` } }], usage: i === 199 ? { prompt_tokens: 3 } : undefined } })));
    s.push(Buffer.from(deltas));
    expect(s.result()).toEqual({ inputTokens: 3 });
    expect(s.parsed).toBe(1);
  });

  test('garbage: binary noise, broken JSON, [DONE] only, empty stream', () => {
    let seed = 42;
    const noise = Buffer.alloc(200_000);
    for (let i = 0; i < noise.length; i++) {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      noise[i] = seed & 0xff;
    }
    expect(() => scan([noise])).not.toThrow();
    expect(scan([noise, Buffer.from(`\n\n${chatStream}`)])).toEqual(expected.chat);
    expect(scan(['data: {"usage": {"prompt_tokens": 5\n\n', 'data: {usage}\n\n', 'data: usage\n\n'])).toBeUndefined();
    expect(scan(['data: [DONE]\n\n'])).toBeUndefined();
    expect(scan([])).toBeUndefined();
    expect(scan(['event: x\n\n\n\n'])).toBeUndefined();
  });

  test('hostile counts in a stream are ignored, valid ones of other events kept', () => {
    const text = sse([
      { data: { type: 'message_start', message: { usage: { input_tokens: -5, cache_read_input_tokens: 'NaN', cache_creation_input_tokens: 1e308 } } } },
      { data: { type: 'message_delta', usage: { output_tokens: 7 } } },
      { data: { usage: { prompt_tokens: NaN } } }, // JSON.stringify(NaN) -> null
    ]);
    expect(scan([text])).toEqual({ outputTokens: 7 });
  });

  test('an event over the limit is skipped whole; the scanner keeps at most the limit per line', () => {
    const huge = `data: {"usage":{"prompt_tokens":999},"pad":"${'x'.repeat(SSE_USAGE_LINE_LIMIT)}"}\n\n`;
    expect(scan([huge])).toBeUndefined();
    expect(scan([huge, chatStream])).toEqual(expected.chat);
    // the same, arriving in small pieces (the line grows past the limit across chunks)
    const pieces: string[] = [];
    for (let i = 0; i < huge.length; i += 1000) pieces.push(huge.slice(i, i + 1000));
    expect(scan([...pieces, chatStream])).toEqual(expected.chat);
    // many short data lines adding up past the limit
    const many = `${Array.from({ length: 2000 }, () => `data: ${'y'.repeat(60)}`).join('\n')}\ndata: "usage"\n\n`;
    expect(scan([many, responsesStream])).toEqual(expected.responses);
    // an over-long comment line skips its event only
    expect(scan([`: ${'z'.repeat(SSE_USAGE_LINE_LIMIT + 10)}\n\n`, geminiStream])).toEqual(expected.gemini);
  });

  test('a stream that never ends a line: bounded memory, linear time', () => {
    const s = new SseUsageScanner();
    const chunk = Buffer.alloc(64 * 1024, 0x61); // 'a', no newline ever
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 800; i++) s.push(chunk); // 50 MiB
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    expect((s as unknown as { partial?: Buffer }).partial).toBeUndefined();
    expect(ms).toBeLessThan(2000);
    s.push(Buffer.from(`\n\n${chatStream}`));
    expect(s.result()).toEqual(expected.chat);
  });

  test('a stream of many large events without usage is scanned fast (no JSON.parse)', () => {
    const s = new SseUsageScanner();
    const ev = Buffer.from(`data: {"choices":[{"delta":{"content":"${'w'.repeat(30_000)}"}}]}\n\n`);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < 1000; i++) s.push(ev); // ~30 MB
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    expect(s.parsed).toBe(0);
    expect(ms).toBeLessThan(3000);
  });
});
