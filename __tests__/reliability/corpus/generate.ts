// Generates the bad-input corpus (the *.json files of this folder). Run once after changing it:
//
//   npx tsx __tests__/reliability/corpus/generate.ts
//
// The cases target the app that __tests__/reliability/bad-input.test.ts builds: an auth stub
// (Bearer tokens of ../kit.ts), distributor() with bodyLimit 256 KiB, multipart on, allowBodyGroup,
// the default affinity rules plus two custom rules (one with an unanchored model regex), a setup
// hook that fails on request (x-fail-setup) with secrets in its message, and a fake relay
// answering 200. Channels:
//   1 main-a  gpt-4o-mini,gpt-4o   default       p10 w3
//   2 main-b  gpt-4o-mini,gpt-4o   default,vip   p10 w1 (two keys)
//   3 media   whisper-1,tts-1,dall-e,text-moderation-stable,gemini-2.0-flash,gpt-4o-realtime  default
//   4 off     gpt-4o-mini,legacy-model  default  status 2 (disabled)
// Tokens: A = default group; B = vip group with modelLimits [gpt-4o-mini, gpt-4o]; C = specific
// channel 4 (disabled); D = specific channel 99 (unknown).
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import {
  CLAUDE_SESSION_SECRET, NESTED_SESSION_SECRET, SESSION_SECRET, TOKEN_A, TOKEN_B, TOKEN_PIN_DISABLED, TOKEN_PIN_UNKNOWN, X_API_KEY,
} from '../kit';
import type { BodySpec, CorpusCase, CorpusFile, Str } from './types';

const CHAT = '/v1/chat/completions';
const RESPONSES = '/v1/responses';
const MESSAGES = '/v1/messages';
const LIMIT = 256 * 1024;

type Expect = CorpusCase['expect'];
const ok: Expect = { status: 200, code: null, layer: 'relay' };
const bad: Expect = { status: 400, code: 'invalid_request', layer: 'distributor' };
const noModel: Expect = { status: 400, code: 'model_required', layer: 'distributor' };
const notFound: Expect = { status: 503, code: 'model_not_found', layer: 'distributor' };
const forbidden: Expect = { status: 403, code: 'group_forbidden', layer: 'distributor' };
const tooLarge: Expect = { status: 413, code: 'request_too_large', layer: 'distributor' };
const unauth: Expect = { status: 401, code: 'invalid_api_key', layer: 'auth' };
const headerOverflow: Expect = { status: 431, code: null, layer: 'node' };

function headers(ct: Str | null = 'application/json', token = TOKEN_A, extra: Array<[string, Str]> = []): Array<[string, Str]> {
  const h: Array<[string, Str]> = [];
  if (ct !== null) h.push(['content-type', ct]);
  h.push(['authorization', `Bearer ${token}`], ['x-api-key', X_API_KEY], ...extra);
  return h;
}

const files: Record<string, CorpusFile> = {};
function add(file: string, description: string, cases: Array<Omit<CorpusCase, 'category'>>): void {
  files[file] = { description, cases: cases.map((c) => ({ ...c, category: file })) };
}

function post(name: string, body: BodySpec | undefined, expect: Expect, opts: Partial<CorpusCase> = {}): Omit<CorpusCase, 'category'> {
  return { name, method: 'POST', path: CHAT, headers: headers(), body, expect, ...opts };
}
const utf8 = (s: Str): BodySpec => ({ utf8: s });
const R = (unit: string, times: number): Str => ({ repeat: { unit, times } });
/** Concatenation; adjacent plain strings are merged, and an all-string result is a plain string. */
const C = (...parts: Str[]): Str => {
  const out: Str[] = [];
  for (const p of parts) {
    if (p === '') continue;
    const last = out[out.length - 1];
    if (typeof p === 'string' && typeof last === 'string') out[out.length - 1] = last + p;
    else out.push(p);
  }
  return out.length === 1 && typeof out[0] === 'string' ? out[0] : { concat: out };
};
/** prefix + unit x times + suffix */
const RP = (o: { prefix?: string; unit: string; times: number; suffix?: Str }): Str => C(o.prefix ?? '', R(o.unit, o.times), o.suffix ?? '');
const json = (v: unknown): BodySpec => ({ utf8: JSON.stringify(v) });
const chat = (extra: Record<string, unknown> = {}) => ({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], ...extra });

// ---- malformed JSON ---------------------------------------------------------------------------
{
  const invalid = [
    '{', '}', '{"model":}', '{"model":"gpt-4o-mini",}', "{'model':'gpt-4o-mini'}", '{model:"gpt-4o-mini"}',
    '{"model":"gpt-4o-mini"}}', '{"model":"gpt-4o-mini"} {"x":1}', 'NaN', '{"a":NaN,"model":"gpt-4o-mini"}',
    '{"a":Infinity,"model":"gpt-4o-mini"}', '{"a":undefined}', '/* c */ {"model":"gpt-4o-mini"}',
    '{"model":"gpt-4o-mini" // c\n}', '{"model":"\\x41"}', '{"model":"\\u12"}', '{"model":"a\u0001b"}',
    '\uFEFF{"model":"gpt-4o-mini"}', '{"model":"gpt-4o-mini","n":01}', '{"a":.5}', '{"a":+1}', '{"a":0x10}',
    '{"a":1e}', '{"a":tru}', '{"a":nul}', '[', ']', '"', '{"model":"gpt-4o-mini"]', '{,}', '{"":}',
    '\u0000', '{"model":"gpt-4o-mini"}\u0000', '{"model" "gpt-4o-mini"}', '{"model":"gpt-4o-mini"\n"x":1}',
    '{"model":"gpt-4o-mini","messages":[1,2,]}', 'model=gpt-4o-mini', '<xml model="gpt-4o-mini"/>',
  ];
  const nonObject = ['[]', '[{"model":"gpt-4o-mini"}]', '"gpt-4o-mini"', '123', 'null', 'true', 'false', '0', '-1.5e10', '""'];
  add('malformed-json', 'Bodies labelled application/json that are not JSON, or not a JSON object: always 400 invalid_request.', [
    ...invalid.map((s, i) => post(`invalid JSON #${i + 1}: ${JSON.stringify(s).slice(0, 60)}`, utf8(s), bad)),
    ...nonObject.map((s) => post(`JSON that is not an object: ${s}`, utf8(s), bad)),
  ]);
}

// ---- truncated JSON ---------------------------------------------------------------------------
{
  const full = JSON.stringify({
    model: 'gpt-4o-mini', stream: true, prompt_cache_key: SESSION_SECRET,
    messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'héllo wörld — ünïcode ✓ 😀' }],
    metadata: { user_id: JSON.stringify({ session_id: NESTED_SESSION_SECRET }) },
  });
  const bytes = Buffer.from(full, 'utf8');
  const cuts = new Set<number>();
  for (let i = 1; i <= 30; i++) cuts.add(Math.max(1, Math.floor((i * (bytes.length - 1)) / 30)));
  cuts.add(bytes.length - 1);
  // a cut inside a multi-byte character as well
  const emoji = bytes.indexOf(Buffer.from('😀', 'utf8'));
  cuts.add(emoji + 2);
  const cases = [...cuts].filter((c) => c > 0 && c < bytes.length).sort((a, b) => a - b).map((c) =>
    post(`truncated at byte ${c} of ${bytes.length}`, { base64: bytes.subarray(0, c).toString('base64') }, bad, { path: RESPONSES }));
  add('truncated-json', 'A valid /v1/responses body (with planted affinity values) cut at 30+ points, including inside a UTF-8 sequence: 400 invalid_request, and the planted values never echoed.', cases);
}

// ---- wrong types for model / group --------------------------------------------------------------
{
  const wrong: Array<[string, unknown]> = [
    ['number', 123], ['float', 1.5], ['negative zero', -0], ['true', true], ['false', false], ['empty array', []],
    ['array of the model', ['gpt-4o-mini']], ['empty object', {}], ['object with a name', { name: 'gpt-4o-mini' }],
    ['huge number', 1e308], ['nested array', [[['gpt-4o-mini']]]],
  ];
  const cases: Array<Omit<CorpusCase, 'category'>> = [];
  for (const [label, v] of wrong) cases.push(post(`model is ${label}`, json({ ...chat(), model: v }), bad));
  for (const [label, v] of wrong) cases.push(post(`group is ${label}`, json({ ...chat(), group: v }), bad));
  cases.push(
    post('model 1e400 (parses to Infinity, a number)', utf8('{"model":1e400}'), bad),
    post('model null is absent', json({ ...chat(), model: null }), noModel),
    post('model empty string', json({ ...chat(), model: '' }), noModel),
    post('model missing', json({ messages: [] }), noModel),
    post('model with spaces around it is not trimmed', json({ ...chat(), model: ' gpt-4o-mini ' }), notFound),
    post('model of another case', json({ ...chat(), model: 'GPT-4O-MINI' }), notFound),
    post('group null is absent', json({ ...chat(), group: null }), ok),
    post('group empty string is absent', json({ ...chat(), group: '' }), ok),
    post("group equal to the caller's group", json({ ...chat(), group: 'default' }), ok),
    post('group vip outside the usable groups', json({ ...chat(), group: 'vip' }), forbidden),
    post('group auto outside the usable groups', json({ ...chat(), group: 'auto' }), forbidden),
    post('group __proto__', json({ ...chat(), group: '__proto__' }), forbidden),
    post('group constructor', json({ ...chat(), group: 'constructor' }), forbidden),
    post('group toString', json({ ...chat(), group: 'toString' }), forbidden),
    post('group vip for a vip caller', json({ ...chat(), group: 'vip' }), ok, { headers: headers('application/json', TOKEN_B) }),
    post('group default for a vip caller (usable)', json({ ...chat(), group: 'default' }), ok, { headers: headers('application/json', TOKEN_B) }),
    post('model outside the modelLimits', json({ ...chat(), model: 'gpt-4' }), { status: 403, code: 'model_not_allowed', layer: 'distributor' }, { headers: headers('application/json', TOKEN_B) }),
    post('duplicate model keys: the last (a string) wins', utf8('{"model":1,"model":"gpt-4o-mini"}'), ok),
    post('duplicate model keys: the last (a number) wins', utf8('{"model":"gpt-4o-mini","model":1}'), bad),
    post('specific channel that is disabled', json(chat()), { status: 403, code: 'channel_disabled', layer: 'distributor' }, { headers: headers('application/json', TOKEN_PIN_DISABLED) }),
    post('specific channel that does not exist', json(chat()), { status: 400, code: 'invalid_channel_id', layer: 'distributor' }, { headers: headers('application/json', TOKEN_PIN_UNKNOWN) }),
    post('model served only by a disabled channel', json({ ...chat(), model: 'legacy-model' }), notFound),
    post('a vip caller asking for whisper-1 (outside its model limits)', json({ model: 'whisper-1' }), { status: 403, code: 'model_not_allowed', layer: 'distributor' }, { headers: headers('application/json', TOKEN_B), path: '/v1/audio/transcriptions' }),
  );
  add('wrong-types', 'model / group of the wrong JSON type, and routing edge cases (forbidden groups, model limits, specific channels).', cases);
}

// ---- prototype pollution ----------------------------------------------------------------------
{
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    post('__proto__ with a polluting payload next to the model', utf8('{"__proto__":{"polluted":"yes","isAdmin":true},"model":"gpt-4o-mini"}'), ok),
    post('model only inside __proto__ (must not be read through the prototype)', utf8('{"__proto__":{"model":"gpt-4o-mini"}}'), noModel),
    post('group only inside __proto__', utf8('{"__proto__":{"group":"vip"},"model":"gpt-4o-mini"}'), ok),
    post('constructor.prototype payload', utf8('{"constructor":{"prototype":{"polluted":"yes"}},"model":"gpt-4o-mini"}'), ok),
    post('model is an object with __proto__', utf8('{"model":{"__proto__":{"polluted":"yes"}}}'), bad),
    post('nested __proto__ at depth', utf8('{"model":"gpt-4o-mini","a":{"b":{"__proto__":{"polluted":"yes"}}}}'), ok),
    post('prompt_cache_key is an object with __proto__', utf8('{"model":"gpt-4o-mini","prompt_cache_key":{"__proto__":{"polluted":"yes"}}}'), ok, { path: RESPONSES }),
    post('prompt_cache_key only inside __proto__', utf8(`{"model":"gpt-4o-mini","__proto__":{"prompt_cache_key":"${SESSION_SECRET}"}}`), ok, { path: RESPONSES }),
    post('metadata.user_id only inside metadata.__proto__', utf8(`{"model":"gpt-4o-mini","metadata":{"__proto__":{"user_id":"{\\"session_id\\":\\"${NESTED_SESSION_SECRET}\\"}"}}}`), ok, { path: MESSAGES }),
    post('session_id only inside the nested __proto__', json({ model: 'gpt-4o-mini', metadata: { user_id: `{"__proto__":{"session_id":"${NESTED_SESSION_SECRET}"}}` } }), ok, { path: MESSAGES }),
    post('nested session_id is an object with __proto__', json({ model: 'gpt-4o-mini', metadata: { user_id: '{"session_id":{"__proto__":{"polluted":"yes"}}}' } }), ok, { path: MESSAGES }),
    post('metadata is an array', json({ model: 'gpt-4o-mini', metadata: [{ user_id: 'x' }] }), ok, { path: MESSAGES }),
    post('custom rule body path metadata.session through constructor', utf8('{"model":"gpt-4o-mini","metadata":{"constructor":{"session":"x"}}}'), ok),
    post('model __proto__', json({ model: '__proto__' }), notFound),
    post('model constructor', json({ model: 'constructor' }), notFound),
    post('model hasOwnProperty', json({ model: 'hasOwnProperty' }), notFound),
    post('model toString', json({ model: 'toString' }), notFound),
    post('model __defineGetter__', json({ model: '__defineGetter__' }), notFound),
    post('model valueOf', json({ model: 'valueOf' }), notFound),
    post('form: __proto__[polluted]', utf8('__proto__[polluted]=yes&model=gpt-4o-mini'), ok, { headers: headers('application/x-www-form-urlencoded') }),
    post('form: __proto__ plain', utf8('__proto__=yes&model=gpt-4o-mini'), ok, { headers: headers('application/x-www-form-urlencoded') }),
    post('form: constructor[prototype][polluted]', utf8('constructor[prototype][polluted]=yes&model=gpt-4o-mini'), ok, { headers: headers('application/x-www-form-urlencoded') }),
    post('form: model __proto__', utf8('model=__proto__'), notFound, { headers: headers('application/x-www-form-urlencoded') }),
    post('form: model only after __proto__ (first value wins per key)', utf8('model=__proto__&model=gpt-4o-mini'), notFound, { headers: headers('application/x-www-form-urlencoded') }),
    post('query: __proto__[polluted]', json(chat()), ok, { path: `${CHAT}?__proto__[polluted]=yes&constructor[prototype][isAdmin]=1` }),
    post('query: custom rule session=__proto__', json(chat()), ok, { path: `${CHAT}?session=__proto__` }),
    post('realtime: model __proto__ in the query', undefined, notFound, { path: '/v1/realtime?model=__proto__', headers: headers(null) }),
    post('realtime: __proto__ next to the model', undefined, ok, { path: '/v1/realtime?__proto__=x&model=gpt-4o-realtime', headers: headers(null) }),
    post('header named __proto__', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['__proto__', 'polluted'], ['constructor', 'x']]) }),
    post('multipart field named __proto__', multipart([['__proto__', 'polluted'], ['model', 'gpt-4o-mini']]).body, ok, { headers: headers(multipart([]).ct) }),
  ];
  add('prototype-pollution', '__proto__ / constructor keys in JSON, form, query, headers and multipart: served or refused as usual, and no prototype changes (checked after the whole corpus).', cases);
}

function multipart(parts: Array<[string, Str, string?]>, boundary: Str = 'XyZcorpusBoundary42'): { ct: string; body: BodySpec } {
  const chunks: Str[] = [];
  for (const [name, value, filename] of parts) {
    chunks.push('--', boundary, `\r\nContent-Disposition: form-data; name="${name}"${filename ? `; filename="${filename}"` : ''}\r\n\r\n`, value, '\r\n');
  }
  chunks.push('--', boundary, '--\r\n');
  return { ct: `multipart/form-data; boundary=${typeof boundary === 'string' ? boundary : '(see case)'}`, body: utf8(C(...chunks)) };
}

// ---- deep nesting -------------------------------------------------------------------------------
{
  const arr = (n: number): Str => RP({ prefix: '{"model":"gpt-4o-mini","x":', unit: '[', times: n, suffix: C(R(']', n), '}') });
  const obj = (n: number): Str => RP({ prefix: '{"model":"gpt-4o-mini","x":', unit: '{"a":', times: n, suffix: C('1', R('}', n), '}') });
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    post('arrays nested 1,000 deep', utf8(arr(1000)), ok),
    post('arrays nested 10,000 deep', utf8(arr(10000)), ok),
    post('arrays nested 60,000 deep', utf8(arr(60000)), ok),
    post('objects nested 1,000 deep', utf8(obj(1000)), ok),
    post('objects nested 20,000 deep', utf8(obj(20000)), ok),
    post('prompt_cache_key nested 50,000 deep (too deep to serialise: no affinity value)', utf8(RP({ prefix: '{"model":"gpt-4o-mini","prompt_cache_key":', unit: '[', times: 50000, suffix: C(R(']', 50000), '}') })), ok, { path: RESPONSES }),
    post('prompt_cache_key nested 500 deep (serialised as the value)', utf8(RP({ prefix: '{"model":"gpt-4o-mini","prompt_cache_key":', unit: '[', times: 500, suffix: C(`"${SESSION_SECRET}"`, R(']', 500), '}') })), ok, { path: RESPONSES }),
    post('metadata.user_id is a JSON string nested 30,000 deep', utf8(C('{"model":"gpt-4o-mini","metadata":{"user_id":"{\\"session_id\\":', R('[', 30000), R(']', 30000), '}"}}')), ok, { path: MESSAGES }),
    post('model nested inside objects is not a top-level model', json({ a: { b: { c: { model: 'gpt-4o-mini' } } } }), noModel),
    post('unclosed arrays 60,000 deep', utf8(RP({ prefix: '{"model":"gpt-4o-mini","x":', unit: '[', times: 60000 })), bad),
    post('unclosed objects 20,000 deep', utf8(RP({ prefix: '{"model":"gpt-4o-mini","x":', unit: '{"a":', times: 20000 })), bad),
    post('a top-level array nested 60,000 deep', utf8(RP({ unit: '[', times: 60000, suffix: R(']', 60000) })), bad),
    post('a custom-rule body path (metadata.session) that is deeply nested', utf8(RP({ prefix: '{"model":"gpt-4o-mini","metadata":{"session":', unit: '{"s":', times: 20000, suffix: C('1', R('}', 20000), '}}') })), ok),
    post('10,000 duplicate keys at the top level', utf8(C('{"model":"gpt-4o-mini",', R('"k":1,', 10000), '"z":0}')), ok),
  ];
  add('deep-nesting', 'Deeply nested arrays and objects (up to 60,000 levels) around and inside the fields the distributor reads.', cases);
}

// ---- huge strings and header values --------------------------------------------------------------
{
  const big = (n: number, unit = 'a'): Str => R(unit, n);
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    post('model of 200,000 characters', utf8(RP({ prefix: '{"model":"', unit: 'a', times: 200000, suffix: '"}' })), notFound),
    post('model of 40,000 "gpt-" repetitions (regex-hostile for model rules)', utf8(RP({ prefix: '{"model":"', unit: 'gpt-', times: 40000, suffix: '"}' })), notFound),
    post('prompt_cache_key of 200,000 characters', utf8(RP({ prefix: '{"model":"gpt-4o-mini","prompt_cache_key":"', unit: 'k', times: 200000, suffix: '"}' })), ok, { path: RESPONSES }),
    post('prompt_cache_key of 60,000 emoji', utf8(RP({ prefix: '{"model":"gpt-4o-mini","prompt_cache_key":"', unit: '😀', times: 60000, suffix: '"}' })), ok, { path: RESPONSES }),
    post('message content of 250,000 characters (under the limit)', utf8(RP({ prefix: '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"', unit: 'x', times: 250000, suffix: '"}]}' })), ok),
    post('custom rule header x-session-id of 12,000 characters', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['x-session-id', big(12000, 's')]]) }),
    post('claude session header of 12,000 characters', json({ model: 'claude-3-5-sonnet' }), notFound, { path: MESSAGES, headers: headers('application/json', TOKEN_A, [['x-claude-code-session-id', big(12000, 'c')]]) }),
    post('claude session header of 12,000 characters on a served model', json({ model: 'gpt-4o-mini' }), ok, { path: MESSAGES, headers: headers('application/json', TOKEN_A, [['x-claude-code-session-id', big(12000, 'c')]]) }),
    post('an unrelated header of 12,000 characters', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['x-junk', big(12000, 'j')]]) }),
    post('user-agent of 12,000 characters', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['user-agent', big(12000, 'u')]]) }),
    post('authorization of 12,000 characters (unknown token)', json(chat()), unauth, { headers: [['content-type', 'application/json'], ['authorization', RP({ prefix: 'Bearer ', unit: 't', times: 12000 })]] }),
    post('200 headers of 50 characters', json(chat()), ok, { headers: headers('application/json', TOKEN_A, Array.from({ length: 200 }, (_, i): [string, Str] => [`x-h${i}`, big(50, 'h')])) }),
    post('content-type of 8,000 characters (json with parameters)', json(chat()), ok, { headers: headers(RP({ prefix: 'application/json; ', unit: 'p=v; ', times: 1600 })) }),
    post('a header of 20,000 characters (over Node\'s 16 KiB header limit)', json(chat()), headerOverflow, { headers: headers('application/json', TOKEN_A, [['x-junk', big(20000, 'j')]]) }),
    post('a query string of 8,000 characters', json(chat()), ok, { path: RP({ prefix: `${CHAT}?q=`, unit: 'q', times: 8000 }) }),
    post('a URL of 20,000 characters (over the header limit)', json(chat()), headerOverflow, { path: RP({ prefix: `${CHAT}?q=`, unit: 'q', times: 20000 }) }),
    post('a Gemini path model of 8,000 characters', undefined, notFound, { path: RP({ prefix: '/v1beta/models/', unit: 'g', times: 8000, suffix: ':generateContent' }), headers: headers(null) }),
    post('multipart model field of 200,000 characters', multipart([['model', R('m', 200000)]]).body, notFound, { headers: headers(multipart([]).ct) }),
  ];
  add('huge-values', 'Huge strings in the model, the affinity values, the body, headers, the URL and multipart fields.', cases);
}

// ---- invalid UTF-8 ------------------------------------------------------------------------------
{
  const L = (s: string): BodySpec => ({ latin1: s });
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    post('0xff in a string value', L('{"model":"gpt-4o-mini","note":"\xff\xfe"}'), ok),
    post('overlong encoding in the model', L('{"model":"gpt-4o-mini\xc0\xaf"}'), notFound),
    post('a lone continuation byte in the model', L('{"model":"gpt-4o-mini\x80"}'), notFound),
    post('a truncated 3-byte sequence at the end of a value', L('{"model":"gpt-4o-mini","x":"\xe2\x82"}'), ok),
    post('invalid bytes outside strings', L('{"model":"gpt-4o-mini"\xff}'), bad),
    post('a body of 0xff bytes', L('\xff\xfe\xfd\xfc'), bad),
    post('UTF-16LE JSON with a BOM', { base64: Buffer.concat([Buffer.from([0xff, 0xfe]), Buffer.from('{"model":"gpt-4o-mini"}', 'utf16le')]).toString('base64') }, bad, { headers: headers('application/json; charset=utf-16') }),
    post('UTF-16BE JSON without a BOM', { base64: Buffer.from('{"model":"gpt-4o-mini"}', 'utf16le').swap16().toString('base64') }, bad),
    post('a lone high surrogate escape in the affinity value', utf8(`{"model":"gpt-4o-mini","prompt_cache_key":"\\ud800${SESSION_SECRET}"}`), ok, { path: RESPONSES }),
    post('a lone low surrogate escape in the model', utf8('{"model":"\\udc00"}'), notFound),
    post('a NUL escape in the model', utf8('{"model":"gpt-4o-mini\\u0000"}'), notFound),
    post('a NUL escape in the affinity value', utf8('{"model":"gpt-4o-mini","prompt_cache_key":"a\\u0000b"}'), ok, { path: RESPONSES }),
    post('invalid bytes in the claude session header', json({ model: 'gpt-4o-mini' }), ok, { path: MESSAGES, headers: headers('application/json', TOKEN_A, [['x-claude-code-session-id', '\xff\xfe\xc0\xaf']]) }),
    post('raw UTF-8 bytes in a header (sent as bytes)', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['x-session-id', Buffer.from('сессия-😀', 'utf8').toString('latin1')]]) }),
    post('a malformed percent escape in a Gemini path model', undefined, bad, { path: '/v1beta/models/%ff%fe:generateContent', headers: headers(null) }),
    post('a truncated percent escape in a Gemini path model', undefined, bad, { path: '/v1beta/models/%E0%A4%A:generateContent', headers: headers(null) }),
    post('form body with %ff in the model', utf8('model=gpt-4o-mini%ff'), notFound, { headers: headers('application/x-www-form-urlencoded') }),
    post('form body with raw 0xff in the model', L('model=gpt-4o-mini\xff'), notFound, { headers: headers('application/x-www-form-urlencoded') }),
    post('realtime query model %ff', undefined, notFound, { path: '/v1/realtime?model=%ff', headers: headers(null) }),
    post('multipart model field with invalid bytes', L('--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-mini\xff\r\n--b--\r\n'), notFound, { headers: headers('multipart/form-data; boundary=b') }),
    post('invalid bytes in the request path', json(chat()), { status: 400, code: null, layer: 'node' }, { path: `${CHAT}/\xff\xfe` }),
  ];
  add('invalid-utf8', 'Invalid UTF-8 and odd encodings in bodies, headers, paths, forms and multipart.', cases);
}

// ---- empty and oversized bodies -----------------------------------------------------------------
{
  const pad = (total: number): Str => {
    const prefix = '{"model":"gpt-4o-mini","pad":"';
    const suffix = '"}';
    return RP({ prefix, unit: 'p', times: total - prefix.length - suffix.length, suffix });
  };
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    post('empty JSON body', undefined, noModel),
    post('whitespace-only JSON body', utf8(' \r\n\t '), noModel),
    post('empty object', utf8('{}'), noModel),
    post('no content-type and no body', undefined, noModel, { headers: headers(null) }),
    post('empty body on /v1/audio/speech (default tts-1)', undefined, ok, { path: '/v1/audio/speech' }),
    post('empty body on /v1/moderations (default text-moderation-stable)', undefined, ok, { path: '/v1/moderations' }),
    post('empty body on /v1/images/generations (default dall-e)', undefined, ok, { path: '/v1/images/generations' }),
    post('empty body, chunked', undefined, noModel, { chunked: true }),
    post('a JSON body of exactly the limit', utf8(pad(LIMIT)), ok),
    post('a JSON body one byte over the limit (Content-Length)', utf8(pad(LIMIT + 1)), tooLarge),
    post('a JSON body of 1 MiB (Content-Length)', utf8(pad(1024 * 1024)), tooLarge),
    post('a JSON body over the limit, chunked (no Content-Length)', utf8(pad(LIMIT + 4096)), tooLarge, { chunked: true }),
    post('a form body over the limit', utf8(RP({ prefix: 'model=gpt-4o-mini&pad=', unit: 'p', times: LIMIT })), tooLarge, { headers: headers('application/x-www-form-urlencoded') }),
    post('a multipart body over the limit', utf8(RP({ prefix: '--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-mini\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="a.bin"\r\n\r\n', unit: 'f', times: LIMIT, suffix: '\r\n--b--\r\n' })), tooLarge, { headers: headers('multipart/form-data; boundary=b') }),
    post('a text/plain body over the limit is not read (no model)', utf8(pad(LIMIT + 1)), noModel, { headers: headers('text/plain') }),
    { ...post('GET with a JSON body', json(chat()), ok), method: 'GET' },
    { ...post('GET without a body', undefined, noModel), method: 'GET' },
    { ...post('PUT with a JSON body', json(chat()), ok), method: 'PUT' },
    { ...post('DELETE with a JSON body', json(chat()), ok), method: 'DELETE' },
    { ...post('OPTIONS without a body', undefined, noModel), method: 'OPTIONS' },
  ];
  add('empty-and-oversized', 'Empty bodies, bodies at and over the 256 KiB limit (Content-Length and chunked), and other methods.', cases);
}

// ---- odd content types --------------------------------------------------------------------------
{
  const body = json(chat());
  const ct = (name: string, contentType: string | null, expect: Expect, b: BodySpec | undefined = body, extra: Array<[string, Str]> = []) =>
    post(name, b, expect, { headers: headers(contentType, TOKEN_A, extra) });
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    ct('application/json; charset=utf-8', 'application/json; charset=utf-8', ok),
    ct('APPLICATION/JSON', 'APPLICATION/JSON', ok),
    ct('application/vnd.api+json', 'application/vnd.api+json', ok),
    ct('application/problem+json with parameters', 'application/problem+json; a=b', ok),
    ct('application/jsonp (treated as JSON)', 'application/jsonp', ok),
    ct('application/json with a boundary parameter', 'application/json; boundary=x', ok),
    ct('application/json, text/plain (a list)', 'application/json, text/plain', ok),
    ct('text/json (not read)', 'text/json', noModel),
    ct('text/plain with a JSON body (not read)', 'text/plain', noModel),
    ct('application/octet-stream', 'application/octet-stream', noModel),
    ct('an empty content-type', '', noModel),
    ct(';;;;', ';;;;', noModel),
    ct('a content-type of spaces', '   ', noModel),
    ct('application/xml', 'application/xml', noModel),
    ct('no content-type with a JSON body', null, noModel),
    ct('form content-type with a form body', 'application/x-www-form-urlencoded', ok, utf8('model=gpt-4o-mini&stream=true')),
    ct('form content-type with a JSON body', 'application/x-www-form-urlencoded', noModel),
    ct('form content-type with charset', 'application/x-www-form-urlencoded; charset=utf-16', ok, utf8('model=gpt-4o-mini')),
    ct('form with a model[] key', 'application/x-www-form-urlencoded', noModel, utf8('model[]=gpt-4o-mini')),
    ct('form with an empty model', 'application/x-www-form-urlencoded', noModel, utf8('model=')),
    ct('JSON content-type with a form body', 'application/json', bad, utf8('model=gpt-4o-mini')),
    ct('multipart/mixed with a boundary (not form-data: not read)', 'multipart/mixed; boundary=x', noModel),
    ct('multipart/form-data with a JSON body and no boundary', 'multipart/form-data', bad),
    ct('JSON content-type, gzip content-encoding (not decompressed)', 'application/json', bad, { base64: gzipSync(JSON.stringify(chat())).toString('base64') }, [['content-encoding', 'gzip']]),
    { ...ct('JSON sent chunked', 'application/json', ok), chunked: true },
    ct('two content-type headers (json first)', 'application/json', ok, body, [['content-type', 'text/plain']]),
  ];
  add('content-types', 'Odd, missing, duplicated and misleading content types and encodings.', cases);
}

// ---- multipart ----------------------------------------------------------------------------------
{
  const M = (name: string, contentType: string, b: string, expect: Expect, p = CHAT) => post(name, utf8(b), expect, { path: p, headers: headers(contentType) });
  const good = multipart([['model', 'gpt-4o-mini'], ['prompt', 'hi']]);
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    M('multipart without a boundary parameter', 'multipart/form-data', 'x', bad),
    M('multipart with an empty boundary', 'multipart/form-data; boundary=', 'x', bad),
    M('multipart with boundary=;', 'multipart/form-data; boundary=;', 'x', bad),
    M('multipart with a quoted empty boundary', 'multipart/form-data; boundary=""', '--b\r\n', noModel),
    post('well-formed multipart with a model field', good.body, ok, { headers: headers(good.ct) }),
    post('multipart with a quoted boundary', multipart([['model', 'gpt-4o-mini']], 'q b').body, ok, { headers: headers('multipart/form-data; boundary="q b"') }),
    post('multipart with a boundary full of regex metacharacters', multipart([['model', 'gpt-4o-mini']], '(.*)+[x]{2}\\').body, ok, { headers: headers('multipart/form-data; boundary=(.*)+[x]{2}\\') }),
    post('multipart with a boundary and a charset after it', good.body, ok, { headers: headers(`${good.ct}; charset=utf-8`) }),
    post('multipart with the model only as a file part', multipart([['model', 'gpt-4o-mini', 'model.txt']]).body, noModel, { headers: headers(good.ct) }),
    post('multipart transcription without a model (default whisper-1)', multipart([['file', 'RIFF....', 'a.wav']]).body, ok, { path: '/v1/audio/transcriptions', headers: headers(good.ct) }),
    M('multipart without a closing boundary', good.ct, '--XyZcorpusBoundary42\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-mini', noModel),
    M('multipart without a header terminator', good.ct, '--XyZcorpusBoundary42\r\nContent-Disposition: form-data; name="model"', noModel),
    M('multipart with a part without a name', good.ct, '--XyZcorpusBoundary42\r\nContent-Disposition: form-data\r\n\r\ngpt-4o-mini\r\n--XyZcorpusBoundary42--\r\n', noModel),
    M('multipart whose body is binary garbage', good.ct, '\x00\x01\x02--\r\n\r\n', noModel),
    post('multipart with the boundary 1,000 times and no parts', utf8(R('--XyZcorpusBoundary42\r\n', 1000)), noModel, { headers: headers(good.ct) }),
    post('multipart with 1,000 parts, the model last', utf8(C(R('--XyZcorpusBoundary42\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n', 1000), '--XyZcorpusBoundary42\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-4o-mini\r\n--XyZcorpusBoundary42--\r\n')), ok, { headers: headers(good.ct) }),
    post('multipart model with a CRLF inside', multipart([['model', 'gpt-4o-mini\r\nX-Injected: 1']]).body, notFound, { headers: headers(good.ct) }),
    post('multipart with two model fields (the first wins)', multipart([['model', 'nope'], ['model', 'gpt-4o-mini']]).body, notFound, { headers: headers(good.ct) }),
    post('multipart with a 4,000-character boundary', multipart([['model', 'gpt-4o-mini']], R('B', 4000)).body, ok, { headers: headers(C('multipart/form-data; boundary=', R('B', 4000))) }),
    post('multipart boundary declared but the body uses another', multipart([['model', 'gpt-4o-mini']], 'other').body, noModel, { headers: headers(good.ct) }),
  ];
  add('multipart', 'Multipart bodies (options.multipart on): missing, empty and hostile boundaries, truncated and malformed parts.', cases);
}

// ---- paths, auth and affinity sources -------------------------------------------------------------
{
  const cases: Array<Omit<CorpusCase, 'category'>> = [
    post('Gemini path with a model', undefined, ok, { path: '/v1beta/models/gemini-2.0-flash:generateContent', headers: headers(null) }),
    post('Gemini path with an empty model and no body', undefined, noModel, { path: '/v1beta/models/:generateContent', headers: headers(null) }),
    post('Gemini path with a traversal-looking model', undefined, notFound, { path: '/v1beta/models/..%2F..%2Fetc%2Fpasswd:generateContent', headers: headers(null) }),
    post('Gemini path with an encoded NUL', undefined, notFound, { path: '/v1beta/models/gemini%00:generateContent', headers: headers(null) }),
    post('realtime with a model in the query', undefined, ok, { path: '/v1/realtime?model=gpt-4o-realtime', headers: headers(null) }),
    post('realtime with an empty model in the query', undefined, noModel, { path: '/v1/realtime?model=', headers: headers(null) }),
    post('realtime with two models in the query (the first wins)', undefined, notFound, { path: '/v1/realtime?model=nope&model=gpt-4o-realtime', headers: headers(null) }),
    post('a double slash path', json(chat()), ok, { path: '//v1//chat/completions' }),
    post('a path with encoded slashes', json(chat()), ok, { path: '/v1/chat%2Fcompletions' }),
    post('no Authorization header', json(chat()), unauth, { headers: [['content-type', 'application/json']] }),
    post('Authorization: Bearer (no token)', json(chat()), unauth, { headers: [['content-type', 'application/json'], ['authorization', 'Bearer']] }),
    post('Authorization: Basic', json(chat()), unauth, { headers: [['content-type', 'application/json'], ['authorization', `Basic ${Buffer.from(`u:${TOKEN_A}`).toString('base64')}`]] }),
    post('a token with a trailing NUL-looking suffix', json(chat()), unauth, { headers: [['content-type', 'application/json'], ['authorization', `Bearer ${TOKEN_A}%00`]] }),
    post('two Authorization headers', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['authorization', `Bearer ${TOKEN_B}`]]) }),
    post('the claude session header twice', json({ model: 'gpt-4o-mini' }), ok, { path: MESSAGES, headers: headers('application/json', TOKEN_A, [['x-claude-code-session-id', CLAUDE_SESSION_SECRET], ['x-claude-code-session-id', 'other']]) }),
    post('custom rule query source with an array (session[]=)', json(chat()), ok, { path: `${CHAT}?session[]=a&session[]=b` }),
    post('custom rule query source repeated', json(chat()), ok, { path: `${CHAT}?session=${SESSION_SECRET}&session=b` }),
    post('custom rule body source is a number', json(chat({ metadata: { session: 12345 } })), ok),
    post('custom rule body source is an object', json(chat({ metadata: { session: { a: [1, 2, { b: SESSION_SECRET }] } } })), ok),
    post('every setup fails (the error names the key and the token): redacted 503', json(chat()), notFound, { headers: headers('application/json', TOKEN_A, [['x-fail-setup', 'all']]) }),
    post('setup fails on one channel: fallback serves', json(chat()), ok, { headers: headers('application/json', TOKEN_A, [['x-fail-setup', '1']]) }),
    post('every setup fails with an affinity value in the message', json({ model: 'gpt-4o-mini', prompt_cache_key: SESSION_SECRET }), notFound, { path: RESPONSES, headers: headers('application/json', TOKEN_A, [['x-fail-setup', 'all']]) }),
  ];
  add('paths-auth-affinity', 'Paths with models, authentication edge cases, hostile affinity sources, and setup failures whose messages carry secrets.', cases);
}

const dir = __dirname;
let total = 0;
for (const [name, file] of Object.entries(files)) {
  const names = new Set<string>();
  for (const c of file.cases) {
    if (names.has(c.name)) throw new Error(`duplicate case name in ${name}: ${c.name}`);
    names.add(c.name);
  }
  writeFileSync(path.join(dir, `${name}.json`), `${JSON.stringify(file, null, 1)}\n`);
  total += file.cases.length;
  console.log(`${name}.json: ${file.cases.length} cases`);
}
console.log(`total: ${total} cases`);
