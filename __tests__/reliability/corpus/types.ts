// The bad-input corpus format (the JSON files next to this one) and its expansion to raw requests.
import type { RawRequest } from '../kit';

/** A string, or a long one described compactly: `unit` repeated `times`, or a concatenation. */
export type Str = string | { repeat: { unit: string; times: number } } | { concat: Str[] };

/** A body: UTF-8 text, latin1 text (one byte per character, for invalid UTF-8), base64, or a repeat. */
export type BodySpec = { utf8: Str } | { latin1: string } | { base64: string };

export interface CorpusCase {
  name: string;
  category: string;
  method: string;
  path: Str;
  /** Values are sent as latin1 bytes. */
  headers: Array<[string, Str]>;
  body?: BodySpec;
  chunked?: boolean;
  expect: {
    status: number;
    /** The OpenAI `error.code`; null when the answer has no body (Node's own 431/400). */
    code: string | null;
    /** Who answers: the distributor, the auth stub in front of it, the relay behind it, or Node's HTTP parser. */
    layer: 'distributor' | 'auth' | 'relay' | 'node';
  };
  note?: string;
}

export interface CorpusFile {
  description: string;
  cases: CorpusCase[];
}

export function expand(s: Str): string {
  if (typeof s === 'string') return s;
  if ('repeat' in s) return s.repeat.unit.repeat(s.repeat.times);
  return s.concat.map(expand).join('');
}

export function bodyBytes(b: BodySpec | undefined): Buffer | undefined {
  if (!b) return undefined;
  if ('utf8' in b) return Buffer.from(expand(b.utf8), 'utf8');
  if ('latin1' in b) return Buffer.from(b.latin1, 'latin1');
  return Buffer.from(b.base64, 'base64');
}

export function toRawRequest(c: CorpusCase): RawRequest {
  return {
    method: c.method,
    path: expand(c.path),
    headers: c.headers.map(([k, v]) => [k, expand(v)]),
    body: bodyBytes(c.body),
    chunked: c.chunked,
  };
}
