// Reads a request body once, within a byte limit, and leaves `req.body` / `req.rawBody` for the relay.
import type { Request } from 'express';
import { DistributorError, badRequest } from '../errors';

/** Parses `20mb`, `512kb`, `1gb` or a number of bytes. */
export function parseBytes(value: number | string): number {
  if (typeof value === 'number') {
    if (!Number.isFinite(value) || value < 0) throw new Error(`invalid byte size ${value}`);
    return Math.floor(value);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$/i.exec(value);
  if (!m) throw new Error(`invalid byte size "${value}"`);
  const mult = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 }[(m[2] ?? 'b').toLowerCase() as 'b'];
  return Math.floor(Number(m[1]) * mult);
}

export type BodyKind = 'json' | 'form' | 'multipart' | 'other';

/** Classifies a Content-Type header value cheaply. */
export function bodyKind(contentType: string | undefined): BodyKind {
  if (!contentType) return 'other';
  const ct = contentType.toLowerCase();
  if (ct.startsWith('application/json') || (ct.startsWith('application/') && ct.includes('+json'))) return 'json';
  if (ct.startsWith('application/x-www-form-urlencoded')) return 'form';
  if (ct.startsWith('multipart/form-data')) return 'multipart';
  return 'other';
}

interface ReadableReq extends Request {
  _body?: boolean;
}

/** True when a body parser (express.json(), urlencoded, ...) already consumed the body. */
export function bodyAlreadyRead(req: Request): boolean {
  return (req as ReadableReq)._body === true || req.readableEnded === true;
}

/** Buffers the body stream, rejecting with 413 once `limit` bytes are exceeded. */
export function readRaw(req: Request, limit: number): Promise<Buffer> {
  const declared = req.headers['content-length'];
  if (declared !== undefined && Number(declared) > limit) {
    // Drain without keeping anything, so the connection stays usable for the error response.
    req.resume();
    return Promise.reject(tooLarge(limit));
  }
  return new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let done = false;
    const finish = (err: Error | null, buf?: Buffer) => {
      if (done) return;
      done = true;
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('error', onError);
      req.off('aborted', onAborted);
      if (err) reject(err);
      else resolve(buf as Buffer);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) {
        chunks.length = 0;
        req.resume();
        finish(tooLarge(limit));
        return;
      }
      chunks.push(chunk);
    };
    const onEnd = () => finish(null, chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size));
    const onError = (e: Error) => finish(badRequest(`Invalid request: could not read the body (${e.message})`));
    const onAborted = () => finish(badRequest('Invalid request: the client aborted the body'));
    req.on('data', onData);
    req.on('end', onEnd);
    req.on('error', onError);
    req.on('aborted', onAborted);
  });
}

function tooLarge(limit: number): DistributorError {
  return new DistributorError('request_too_large', `Request body is larger than the limit of ${limit} bytes`, 413);
}

/**
 * `req.rawBody` -> the object the distributor parsed from it. The relay sends the raw bytes
 * only while `req.body` is still that object (a replaced body is re-serialised).
 */
export const parsedFromRaw = new WeakMap<Buffer, unknown>();

/** Marks the body as read the way body-parser does, so a parser mounted later skips it. */
export function markBodyRead(req: Request, raw: Buffer, parsed: unknown): void {
  (req as ReadableReq)._body = true;
  if (parsed !== null && typeof parsed === 'object') parsedFromRaw.set(raw, parsed);
  req.rawBody = raw;
  (req as { body: unknown }).body = parsed;
}

/** Reads the `model` field of a buffered multipart body (the first part named `model`). */
export function multipartField(raw: Buffer, contentType: string, field: string): string | undefined {
  const m = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(contentType);
  if (!m) throw badRequest('Invalid request: multipart body without a boundary');
  const boundary = `--${(m[1] ?? m[2]).trim()}`;
  const text = raw.toString('latin1');
  let pos = text.indexOf(boundary);
  while (pos !== -1) {
    const headStart = pos + boundary.length + 2;
    const headEnd = text.indexOf('\r\n\r\n', headStart);
    if (headEnd === -1) return undefined;
    const head = text.slice(headStart, headEnd);
    const next = text.indexOf(`\r\n${boundary}`, headEnd);
    if (next === -1) return undefined;
    const name = /name="([^"]*)"/i.exec(head);
    if (name && name[1] === field && !/filename=/i.test(head)) {
      return Buffer.from(text.slice(headEnd + 4, next), 'latin1').toString('utf8');
    }
    pos = next + 2;
  }
  return undefined;
}
