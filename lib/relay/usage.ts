// Token usage of an upstream answer, read the way relay() sees it: a JSON body (collected up to a
// cap as it passes through) or an SSE stream scanned event by event as its chunks pass through,
// remembering only the usage fields. Pure functions and one small incremental scanner; nothing
// here throws on a malformed or hostile body, and memory stays bounded whatever the upstream sends.
//
// Shapes (the first that fits a JSON object wins):
//   OpenAI chat        usage.prompt_tokens / completion_tokens / prompt_tokens_details.cached_tokens
//                      (streams: the last chunk with `stream_options.include_usage`)
//   OpenAI Responses   usage.input_tokens / output_tokens / input_tokens_details.cached_tokens
//                      (streams: `response.completed` / `response.incomplete` -> response.usage)
//   Anthropic          usage.input_tokens / output_tokens / cache_read_input_tokens (cached) /
//                      cache_creation_input_tokens (cacheWrite); streams: `message_start`
//                      (message.usage) merged with `message_delta` (usage)
//   Gemini             usageMetadata.promptTokenCount / candidatesTokenCount / cachedContentTokenCount
//                      (streams: every chunk may carry it, the last wins; a JSON array of chunks too)
//
// Normalisation: `inputTokens` is every input token, cached ones included (OpenAI and Gemini count
// them that way; Anthropic's `input_tokens` excludes the cache reads and writes, which are added),
// so `cachedTokens / inputTokens` is the cached share for every provider. A count is used only
// when it is a finite number in [0, MAX_TOKEN_COUNT] (floored); anything else (strings, NaN,
// negatives, 1e308) is ignored. cachedTokens never exceeds inputTokens.
import { MAX_TOKEN_COUNT, tokenValue } from '../affinity/usage';
import type { UsageReport } from '../types';

/** Longest SSE line or event data the scanner keeps (bytes); longer events are skipped. Default. */
export const SSE_USAGE_LINE_LIMIT = 64 * 1024;
/** Largest JSON body parsed for its usage (bytes). Default. */
export const JSON_USAGE_BODY_LIMIT = 4 * 1024 * 1024;

/** Usage fields as an answer states them, before normalisation. */
export interface RawUsage {
  input?: number;
  output?: number;
  cached?: number;
  cacheWrite?: number;
  /** The `input` count excludes cached reads and writes (Anthropic): they are added to it. */
  inputExcludesCache?: boolean;
}


function obj(v: unknown): Record<string, unknown> | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

/** Usage from an OpenAI / Responses / Anthropic `usage` object. */
export function fromUsageObject(u: unknown): RawUsage | undefined {
  const o = obj(u);
  if (!o) return undefined;
  const out: RawUsage = {};
  const input = tokenValue(o.prompt_tokens) ?? tokenValue(o.input_tokens);
  if (input !== undefined) out.input = input;
  const output = tokenValue(o.completion_tokens) ?? tokenValue(o.output_tokens);
  if (output !== undefined) out.output = output;
  const details = obj(o.prompt_tokens_details) ?? obj(o.input_tokens_details);
  let cached = details ? tokenValue(details.cached_tokens) : undefined;
  const read = tokenValue(o.cache_read_input_tokens);
  const write = tokenValue(o.cache_creation_input_tokens);
  if (read !== undefined || write !== undefined) {
    out.inputExcludesCache = true;
    if (read !== undefined) cached = read;
    if (write !== undefined) out.cacheWrite = write;
  }
  if (cached !== undefined) out.cached = cached;
  return isEmpty(out) ? undefined : out;
}

/** Usage from a Gemini `usageMetadata` object. */
export function fromUsageMetadata(u: unknown): RawUsage | undefined {
  const o = obj(u);
  if (!o) return undefined;
  const out: RawUsage = {};
  const input = tokenValue(o.promptTokenCount);
  if (input !== undefined) out.input = input;
  const output = tokenValue(o.candidatesTokenCount);
  if (output !== undefined) out.output = output;
  const cached = tokenValue(o.cachedContentTokenCount);
  if (cached !== undefined) out.cached = cached;
  return isEmpty(out) ? undefined : out;
}

function isEmpty(u: RawUsage): boolean {
  return u.input === undefined && u.output === undefined && u.cached === undefined && u.cacheWrite === undefined;
}

/**
 * The usage a parsed JSON value carries: a whole answer (chat completion, Responses object,
 * Anthropic message, Gemini response), one stream event's data, or a JSON array of Gemini chunks
 * (merged in order). Undefined when it carries none.
 */
export function usageOfJson(v: unknown): RawUsage | undefined {
  if (Array.isArray(v)) {
    let acc: RawUsage | undefined;
    // a Gemini JSON stream (objects only: no recursion into nested arrays)
    for (const item of v) acc = mergeUsage(acc, usageOfObject(item));
    return acc;
  }
  return usageOfObject(v);
}

function usageOfObject(v: unknown): RawUsage | undefined {
  const o = obj(v);
  if (!o) return undefined;
  // Anthropic message_start: { type, message: { usage } }
  if (o.type === 'message_start') return fromUsageObject(obj(o.message)?.usage);
  // Responses stream events: { type: 'response.completed', response: { usage } }
  const response = obj(o.response);
  if (response && typeof o.type === 'string' && o.type.startsWith('response.')) return fromUsageObject(response.usage);
  if (o.usageMetadata !== undefined) return fromUsageMetadata(o.usageMetadata);
  return fromUsageObject(o.usage);
}

/** `next`'s fields over `prev`'s (stream events: later counts win, Anthropic parts are merged). */
export function mergeUsage(prev: RawUsage | undefined, next: RawUsage | undefined): RawUsage | undefined {
  if (!next) return prev;
  if (!prev) return { ...next };
  const out: RawUsage = { ...prev };
  if (next.input !== undefined) out.input = next.input;
  if (next.output !== undefined) out.output = next.output;
  if (next.cached !== undefined) out.cached = next.cached;
  if (next.cacheWrite !== undefined) out.cacheWrite = next.cacheWrite;
  if (next.inputExcludesCache) out.inputExcludesCache = true;
  return out;
}

/** The report for `distribution.reportUsage()`; undefined when no count is known. */
export function toUsageReport(u: RawUsage | undefined): UsageReport | undefined {
  if (!u || isEmpty(u)) return undefined;
  const r: UsageReport = {};
  let input = u.input;
  if (input !== undefined && u.inputExcludesCache) input = Math.min(MAX_TOKEN_COUNT, input + (u.cached ?? 0) + (u.cacheWrite ?? 0));
  if (input !== undefined) r.inputTokens = input;
  if (u.output !== undefined) r.outputTokens = u.output;
  if (u.cached !== undefined) r.cachedTokens = input !== undefined ? Math.min(u.cached, input) : u.cached;
  if (u.cacheWrite !== undefined) r.cacheWriteTokens = u.cacheWrite;
  return r;
}

// `usage` is also the start of Gemini's `usageMetadata`
const USAGE_BYTES = Buffer.from('usage');

/** Parses JSON text for its usage; never throws. */
export function usageFromJsonText(text: string | Buffer): UsageReport | undefined {
  // most bodies without a usage field are skipped without a parse
  if (Buffer.isBuffer(text) ? text.indexOf(USAGE_BYTES) === -1 : !text.includes('usage')) return undefined;
  try {
    return toUsageReport(usageOfJson(JSON.parse(Buffer.isBuffer(text) ? text.toString('utf8') : text)));
  } catch {
    return undefined;
  }
}

/** Whether a `content-type` is JSON (`application/json`, `application/*+json`). */
export function isJsonContentType(ct: unknown): boolean {
  if (typeof ct !== 'string') return false;
  const t = ct.split(';', 1)[0].trim().toLowerCase();
  return t === 'application/json' || (t.startsWith('application/') && t.endsWith('+json'));
}

/**
 * Collects a copy of a JSON body as it passes, up to `limit` bytes; past the cap it gives up
 * (and drops what it held). `result()` parses it once at the end.
 */
export class JsonUsageCollector {
  private chunks: Buffer[] | undefined = [];
  private size = 0;

  constructor(private readonly limit = JSON_USAGE_BODY_LIMIT) {}

  push(chunk: Buffer): void {
    if (!this.chunks) return;
    this.size += chunk.length;
    if (this.size > this.limit) {
      this.chunks = undefined;
      return;
    }
    this.chunks.push(chunk);
  }

  /** The usage of the whole body, or undefined (no usage, too large, not JSON). */
  result(): UsageReport | undefined {
    const chunks = this.chunks;
    this.chunks = undefined;
    if (!chunks || chunks.length === 0) return undefined;
    return usageFromJsonText(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, this.size));
  }
}

/**
 * Reads the usage out of an SSE stream incrementally: `push()` each chunk as it passes (any split,
 * LF / CRLF / CR line endings), `result()` at the end. It keeps at most `limit` bytes of a pending
 * line and of one event's data; a longer line or event is skipped whole. Only events whose data
 * mentions `usage` are parsed (as JSON; a parse failure is ignored). Never throws.
 */
export class SseUsageScanner {
  /** The unterminated tail of the last chunk (a line in progress). */
  private partial: Buffer | undefined;
  /** The line in progress outgrew the limit: drop bytes until its end. */
  private skipLine = false;
  /** The event in progress outgrew the limit (or had an over-long line): do not parse it. */
  private skipEvent = false;
  /** The previous chunk ended with CR: a LF starting the next one belongs to it. */
  private afterCR = false;
  private data: Buffer[] = [];
  private dataSize = 0;
  private usage: RawUsage | undefined;
  /** Events parsed for usage (tests and diagnostics). */
  parsed = 0;

  constructor(private readonly limit = SSE_USAGE_LINE_LIMIT) {}

  push(chunk: Buffer): void {
    try {
      this.scan(chunk);
    } catch {
      /* a scanner problem never reaches the relay */
    }
  }

  /** The usage seen so far (call at the end of the stream; a final unterminated event counts). */
  result(): UsageReport | undefined {
    try {
      if (this.partial && !this.skipLine) this.line(this.partial, 0, this.partial.length);
      this.partial = undefined;
      this.dispatch();
      return toUsageReport(this.usage);
    } catch {
      return undefined;
    }
  }

  private scan(chunk: Buffer): void {
    let start = 0;
    const len = chunk.length;
    if (this.afterCR) {
      this.afterCR = false;
      if (len > 0 && chunk[0] === 0x0a) start = 1;
    }
    // the next CR at or after `start` (-1: none left in this chunk)
    let cr = chunk.indexOf(0x0d, start);
    while (start < len) {
      let end = chunk.indexOf(0x0a, start);
      if (cr !== -1 && cr < start) cr = chunk.indexOf(0x0d, start);
      if (cr !== -1 && (end === -1 || cr < end)) end = cr;
      if (end === -1) {
        this.keepPartial(chunk, start, len);
        return;
      }
      this.endLine(chunk, start, end);
      if (chunk[end] === 0x0d) {
        if (end + 1 < len) {
          if (chunk[end + 1] === 0x0a) end++;
        } else {
          this.afterCR = true;
        }
      }
      start = end + 1;
    }
  }

  private keepPartial(chunk: Buffer, start: number, end: number): void {
    if (this.skipLine) return;
    const size = (this.partial?.length ?? 0) + (end - start);
    if (size > this.limit) {
      this.partial = undefined;
      this.skipLine = true;
      this.skipEvent = true;
      return;
    }
    // a copy: the chunk itself is passed on to the client and may be large
    const piece = Buffer.from(chunk.subarray(start, end));
    this.partial = this.partial ? Buffer.concat([this.partial, piece], size) : piece;
  }

  private endLine(chunk: Buffer, start: number, end: number): void {
    if (this.skipLine) {
      this.skipLine = false;
      this.partial = undefined;
      return;
    }
    if (this.partial) {
      const size = this.partial.length + (end - start);
      if (size > this.limit) {
        this.partial = undefined;
        this.skipEvent = true;
        return;
      }
      const whole = Buffer.concat([this.partial, chunk.subarray(start, end)], size);
      this.partial = undefined;
      this.line(whole, 0, whole.length);
      return;
    }
    if (end - start > this.limit) {
      this.skipEvent = true;
      return;
    }
    this.line(chunk, start, end);
  }

  /** One complete line (without its terminator). */
  private line(buf: Buffer, start: number, end: number): void {
    if (start === end) {
      this.dispatch();
      return;
    }
    // `data:` (value after one optional space); other fields and comments are irrelevant here
    if (end - start < 5 || buf[start] !== 0x64 || buf[start + 1] !== 0x61 || buf[start + 2] !== 0x74 || buf[start + 3] !== 0x61 || buf[start + 4] !== 0x3a) return;
    if (this.skipEvent) return;
    let s = start + 5;
    if (s < end && buf[s] === 0x20) s++;
    const size = this.dataSize + (end - s) + (this.data.length > 0 ? 1 : 0);
    if (size > this.limit) {
      this.skipEvent = true;
      this.data = [];
      this.dataSize = 0;
      return;
    }
    if (this.data.length > 0) this.data.push(NEWLINE);
    // a view, not a copy: chunks are not reused once passed on, and the event is bounded
    this.data.push(buf.subarray(s, end));
    this.dataSize = size;
  }

  /** End of an event: parse its data if it may carry usage. */
  private dispatch(): void {
    const parts = this.data;
    const skip = this.skipEvent;
    this.data = [];
    this.dataSize = 0;
    this.skipEvent = false;
    if (skip || parts.length === 0) return;
    const data = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    if (data.indexOf(USAGE_BYTES) === -1) return;
    try {
      const u = usageOfJson(JSON.parse(data.toString('utf8')));
      this.parsed++;
      this.usage = mergeUsage(this.usage, u);
    } catch {
      /* not JSON: ignored */
    }
  }
}

const NEWLINE = Buffer.from('\n');
