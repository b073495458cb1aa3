// Redis reply normalisation, in one place. Clients differ: node-redis answers strings and
// numbers (RESP2 or RESP3), ioredis strings/numbers, either may answer Buffers when configured so.
// The store only issues commands and scripts whose replies are nil, integers, bulk strings or
// arrays (never maps), so anything else is a TypeError the caller treats as a store error.
import { errorText } from '../security/redact';
import { constants } from 'node:os';

/** A reply as text; null for nil. */
export function replyText(reply: unknown): string | null {
  if (reply === null || reply === undefined) return null;
  if (typeof reply === 'string') return reply;
  if (typeof reply === 'number' || typeof reply === 'bigint') return String(reply);
  if (Buffer.isBuffer(reply)) return reply.toString('utf8');
  if (reply instanceof Uint8Array) return Buffer.from(reply).toString('utf8');
  throw new TypeError(`unexpected Redis reply (expected a string, got ${describe(reply)})`);
}

/** A reply as a safe integer; null for nil. */
export function replyInt(reply: unknown): number | null {
  if (typeof reply === 'number') {
    if (Number.isSafeInteger(reply)) return reply;
    throw new TypeError(`unexpected Redis reply (expected an integer, got ${reply})`);
  }
  const text = replyText(reply);
  if (text === null) return null;
  if (!/^-?\d+$/.test(text)) throw new TypeError('unexpected Redis reply (expected an integer string)');
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new TypeError('unexpected Redis reply (integer out of range)');
  return n;
}

/**
 * A pin's value; null for nil. Pins are written as `<value>:<writeTimeMs>`; a value without a
 * write time is a pin written by version 0.1 (a bare channel id) and still reads.
 */
export function replyPin(reply: unknown): string | null {
  const text = replyText(reply);
  if (text === null) return null;
  // `<value>:<write time>`; a 0.1 pin is the bare value
  const m = /^(.*):\d+$/s.exec(text);
  return m ? m[1] : text;
}

/** A reply that must be an array. */
export function replyArray(reply: unknown): unknown[] {
  if (Array.isArray(reply)) return reply;
  throw new TypeError(`unexpected Redis reply (expected an array, got ${describe(reply)})`);
}

/** A flat `[field, value, field, value, ...]` array (a Lua HGETALL) as text pairs. */
export function replyPairs(reply: unknown): Array<[string, string]> {
  const flat = replyArray(reply);
  if (flat.length % 2 !== 0) throw new TypeError('unexpected Redis reply (odd field/value array)');
  const out: Array<[string, string]> = [];
  for (let i = 0; i < flat.length; i += 2) {
    const field = replyText(flat[i]);
    const value = replyText(flat[i + 1]);
    if (field === null || value === null) throw new TypeError('unexpected Redis reply (nil in a field/value array)');
    out.push([field, value]);
  }
  return out;
}

/** A SCAN reply: `[cursor, [key, ...]]`. */
export function replyScan(reply: unknown): { cursor: string; keys: string[] } {
  const [cursor, keys] = replyArray(reply);
  const c = replyText(cursor);
  if (c === null) throw new TypeError('unexpected SCAN reply (nil cursor)');
  return {
    cursor: c,
    keys: replyArray(keys).map((k) => {
      const t = replyText(k);
      if (t === null) throw new TypeError('unexpected SCAN reply (nil key)');
      return t;
    }),
  };
}

/** The message of a Redis error (reply or transport), whatever the client wraps it in. */
export function errorMessage(e: unknown): string {
  return errorText(e, String(e));
}

/** Does the error say the script is not in the server's script cache? */
export function isNoScript(e: unknown): boolean {
  return errorMessage(e).startsWith('NOSCRIPT');
}

/** Node's errno names (ECONNREFUSED, EPIPE...): a message starting with one is a transport failure. */
const ERRNO_NAMES = new Set([...Object.keys(constants.errno), 'ENOTFOUND', 'EAI_AGAIN', 'EAI_FAIL', 'EAI_NONAME']);

/**
 * Is this an error the Redis server answered (an error reply: OOM, READONLY, NOSCRIPT, WRONGTYPE,
 * ERR, BUSY, LOADING...), as opposed to a transport failure (connection refused or closed, client
 * closed, socket timeout)? node-redis throws `ErrorReply` (and its `SimpleError`/`BlobError`
 * subclasses), ioredis `ReplyError`; a raw `sendCommand` may reject with any Error whose message
 * starts with the server's uppercase error prefix, or with the reply text itself. Nothing is
 * imported from a client: the classes are recognised by name along the prototype chain.
 */
export function isErrorReply(e: unknown): boolean {
  if (e === null || e === undefined) return false;
  if (typeof e === 'object') {
    const o = e as { name?: unknown; code?: unknown; errno?: unknown; syscall?: unknown };
    // A system error (ECONNREFUSED, ECONNRESET...) carries errno/syscall: never a reply.
    if (typeof o.syscall === 'string' || typeof o.errno === 'number') return false;
    if (o.name === 'ReplyError' || o.name === 'ErrorReply') return true;
    for (let p = Object.getPrototypeOf(e) as object | null; p && p !== Error.prototype && p !== Object.prototype; p = Object.getPrototypeOf(p) as object | null) {
      const name = (p as { constructor?: { name?: unknown } }).constructor?.name;
      if (name === 'ErrorReply' || name === 'ReplyError') return true;
    }
  }
  const prefix = /^([A-Z][A-Z_]+)(?:\s|$)/.exec(errorMessage(e))?.[1];
  return prefix !== undefined && !ERRNO_NAMES.has(prefix);
}

function describe(v: unknown): string {
  if (v instanceof Map) return 'a map';
  if (Array.isArray(v)) return 'an array';
  return v === null ? 'null' : typeof v;
}
