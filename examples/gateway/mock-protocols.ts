// What the mock upstream (./mock-upstream.ts) answers in each provider's protocol: routes, the
// credential header it expects, error shapes, and the bodies and stream events of Anthropic
// Messages, Gemini generateContent / streamGenerateContent and OpenAI embeddings. Shapes follow
// the providers' API references, trimmed to what clients read.
import type http from 'node:http';

/** The protocol a mock speaks (and the channel `type` that talks to it). */
export type MockProtocol = 'openai' | 'azure' | 'anthropic' | 'gemini';

/** What a request asks for. */
export type MockKind = 'chat' | 'responses' | 'embeddings' | 'messages' | 'gemini' | 'gemini-stream';

export interface MockRoute {
  kind: MockKind;
  /** The model named by the path (Gemini's model segment, Azure's deployment). */
  pathModel?: string;
}

const OPENAI_KINDS: Record<string, MockKind> = { 'chat/completions': 'chat', responses: 'responses', embeddings: 'embeddings' };

function decode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

/** The route a POST path is for, in `protocol`; undefined: this mock does not serve it. */
export function routeOf(protocol: MockProtocol, path: string): MockRoute | undefined {
  switch (protocol) {
    case 'openai': {
      const kind = path.startsWith('/v1/') ? OPENAI_KINDS[path.slice(4)] : undefined;
      return kind ? { kind } : undefined;
    }
    case 'azure': {
      const m = /^\/openai\/deployments\/([^/]+)\/(.+)$/.exec(path);
      const kind = m ? OPENAI_KINDS[m[2]] : undefined;
      return m && kind ? { kind, pathModel: decode(m[1]) } : undefined;
    }
    case 'anthropic':
      return path === '/v1/messages' ? { kind: 'messages' } : undefined;
    case 'gemini': {
      const m = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent)$/.exec(path);
      if (!m) return undefined;
      return { kind: m[2] === 'generateContent' ? 'gemini' : 'gemini-stream', pathModel: decode(m[1]) };
    }
  }
}

/** The header a protocol's key travels in. */
export const AUTH_HEADER: Record<MockProtocol, string> = {
  openai: 'authorization', azure: 'api-key', anthropic: 'x-api-key', gemini: 'x-goog-api-key',
};

const CREDENTIALS = ['authorization', 'x-api-key', 'api-key', 'x-goog-api-key'];

function headerValue(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return typeof v === 'string' ? v : undefined;
}

/** The key a request carries in its protocol's header (`Bearer ` stripped for openai); '' when none. */
export function credentialOf(protocol: MockProtocol, req: http.IncomingMessage): string {
  const v = headerValue(req, AUTH_HEADER[protocol]) ?? '';
  return protocol === 'openai' ? v.replace(/^bearer\s+/i, '') : v;
}

/**
 * Why a request is not authenticated the way `protocol` wants with one of `keys`, or undefined
 * when it is: the right header with a known key, and no other credential (header or `?key=`).
 * Reasons never contain a credential.
 */
export function authProblem(protocol: MockProtocol, req: http.IncomingMessage, keys: ReadonlySet<string>): string | undefined {
  const want = AUTH_HEADER[protocol];
  const raw = headerValue(req, want);
  if (raw === undefined) return `missing ${want} header`;
  if (protocol === 'openai' && !/^bearer\s+/i.test(raw)) return 'authorization is not a Bearer token';
  if (!keys.has(credentialOf(protocol, req))) return `invalid key in ${want}`;
  for (const h of CREDENTIALS) if (h !== want && req.headers[h] !== undefined) return `unexpected credential header ${h}`;
  const url = req.url ?? '';
  const q = url.indexOf('?');
  if (q !== -1 && [...new URLSearchParams(url.slice(q + 1)).keys()].some((k) => k.toLowerCase() === 'key')) return 'unexpected key query parameter';
  return undefined;
}

/** An error body in the provider's shape. */
export function errorBody(protocol: MockProtocol, status: number, message: string): string {
  if (protocol === 'anthropic') {
    const type = status === 401 ? 'authentication_error' : status === 429 ? 'rate_limit_error' : status === 404 ? 'not_found_error'
      : status === 529 ? 'overloaded_error' : status >= 500 ? 'api_error' : 'invalid_request_error';
    return JSON.stringify({ type: 'error', error: { type, message } });
  }
  if (protocol === 'gemini') {
    const s = status === 401 ? 'UNAUTHENTICATED' : status === 403 ? 'PERMISSION_DENIED' : status === 429 ? 'RESOURCE_EXHAUSTED' : status === 404 ? 'NOT_FOUND'
      : status === 503 ? 'UNAVAILABLE' : status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT';
    return JSON.stringify({ error: { code: status, message, status: s } });
  }
  const type = status === 401 ? 'invalid_request_error' : status === 429 ? 'rate_limit_exceeded' : status >= 500 ? 'server_error' : 'invalid_request_error';
  return JSON.stringify({ error: { message, type, param: null, code: status === 401 ? 'invalid_api_key' : null } });
}

/** Counts of one answer: prompt tokens, cache reads, cache writes (a session's first request), output. */
export interface ProtocolUsage {
  prompt: number;
  cached: number;
  written: number;
  completion: number;
}

// ---- Anthropic Messages --------------------------------------------------------------------------

function anthropicUsage(u: ProtocolUsage, outputTokens = u.completion): Record<string, unknown> {
  // Anthropic's input_tokens excludes the tokens read from or written to the cache
  return { input_tokens: Math.max(0, u.prompt - u.cached - u.written), cache_creation_input_tokens: u.written, cache_read_input_tokens: u.cached, output_tokens: outputTokens };
}

export function anthropicMessage(name: string, model: string, u: ProtocolUsage): string {
  return JSON.stringify({
    id: `msg_mock_${name}`, type: 'message', role: 'assistant', model,
    content: [{ type: 'text', text: `Hello from ${name}` }],
    stop_reason: 'end_turn', stop_sequence: null, usage: anthropicUsage(u),
  });
}

/** message_start, content_block_start, ping, content_block_delta x3, content_block_stop, message_delta, message_stop. */
export function anthropicEvents(name: string, model: string, u: ProtocolUsage): string[] {
  const ev = (type: string, data: Record<string, unknown>) => `event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`;
  const delta = (text: string) => ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text } });
  return [
    ev('message_start', { message: { id: `msg_mock_${name}`, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: anthropicUsage(u, 1) } }),
    ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } }),
    ev('ping', {}),
    delta('Hello'),
    delta(' from'),
    delta(` ${name}`),
    ev('content_block_stop', { index: 0 }),
    ev('message_delta', { delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: u.completion } }),
    ev('message_stop', {}),
  ];
}

// ---- Gemini generateContent --------------------------------------------------------------------

function usageMetadata(u: ProtocolUsage): Record<string, unknown> {
  return { promptTokenCount: u.prompt, candidatesTokenCount: u.completion, totalTokenCount: u.prompt + u.completion, cachedContentTokenCount: u.cached };
}

function geminiChunk(model: string, text: string, finish: boolean, u?: ProtocolUsage): Record<string, unknown> {
  return {
    candidates: [{ content: { parts: [{ text }], role: 'model' }, index: 0, ...(finish ? { finishReason: 'STOP' } : {}) }],
    ...(u ? { usageMetadata: usageMetadata(u) } : {}),
    modelVersion: model,
    responseId: 'mock-response',
  };
}

export function geminiResponse(name: string, model: string, u: ProtocolUsage): string {
  return JSON.stringify(geminiChunk(model, `Hello from ${name}`, true, u));
}

/** streamGenerateContent: `data:` events separated by CRLF CRLF with `alt=sse` (as Gemini sends them), else one JSON array. */
export function geminiStream(name: string, model: string, u: ProtocolUsage, sse: boolean): string[] {
  const chunks = [geminiChunk(model, 'Hello', false), geminiChunk(model, ' from', false), geminiChunk(model, ` ${name}`, true, u)];
  if (sse) return chunks.map((c) => `data: ${JSON.stringify(c)}\r\n\r\n`);
  return chunks.map((c, i) => `${i === 0 ? '[' : ',\r\n'}${JSON.stringify(c)}${i === chunks.length - 1 ? ']' : ''}`);
}

// ---- OpenAI embeddings -----------------------------------------------------------------------------

const DIMENSIONS = 8;

/** A deterministic vector per input text. */
function vector(text: string): number[] {
  const out: number[] = [];
  for (let i = 0; i < DIMENSIONS; i++) out.push(((text.charCodeAt(i % Math.max(1, text.length)) || 0) % 97) / 97 - 0.5 + i / 100);
  return out;
}

/** An embeddings list; `encoding_format: "base64"` (what the OpenAI SDK asks for) gives little-endian float32 in base64. */
export function embeddingsResponse(model: string, body: Record<string, unknown>, promptTokens: number): string {
  const input = body.input;
  const texts = Array.isArray(input) ? input.map((x) => (typeof x === 'string' ? x : JSON.stringify(x))) : [typeof input === 'string' ? input : ''];
  const base64 = body.encoding_format === 'base64';
  return JSON.stringify({
    object: 'list',
    data: texts.map((t, index) => {
      const v = vector(t);
      return { object: 'embedding', index, embedding: base64 ? Buffer.from(new Float32Array(v).buffer).toString('base64') : v };
    }),
    model,
    usage: { prompt_tokens: promptTokens, total_tokens: promptTokens },
  });
}
