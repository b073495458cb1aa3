// The pin layout, in one place: how a pin key and a pin value look. Stores treat both as opaque
// strings; only this module knows `aff:<rule part>:<digest>` and what a value holds.

/** Every pin key starts with this (under the store's own prefix). */
export const PIN_NAMESPACE = 'aff:';

/** Rule part of a key: the encoded rule name, or `_` when the rule does not include it. */
export function rulePart(rule: { name: string; includeRuleName: boolean }): string {
  return rule.includeRuleName ? encodeURIComponent(rule.name) : '_';
}

/** The start of every key a rule writes: `aff:<rule part>:`. */
export function pinKeyPrefix(rule: { name: string; includeRuleName: boolean }): string {
  return `${PIN_NAMESPACE}${rulePart(rule)}:`;
}

/**
 * The rule name of a pin key (`aff:<rule part>:<hash>`, without the store prefix): the inverse of
 * `rulePart()`, `_` for rules without `includeRuleName`. The admin counts pins by rule with it.
 */
export function ruleNameOfPinKey(key: string): string {
  const start = key.startsWith(PIN_NAMESPACE) ? PIN_NAMESPACE.length : 0;
  const end = key.indexOf(':', start);
  const part = key.slice(start, end === -1 ? undefined : end);
  if (part === '_') return part;
  try {
    return decodeURIComponent(part);
  } catch {
    return part;
  }
}

/**
 * A pin's value: the channel id in decimal (what version 0.1 stored, so 0.1 pins still read), then
 * `.<key index>` when the pin records the key (`affinity.keyLevel` on a multi-key channel). A
 * reservation (`affinity.coalesce`) appends `~<token>`: the request that wrote it, so that only it
 * deletes it when it fails.
 */
export function pinValue(channelId: number, keyIndex?: number): string {
  return keyIndex === undefined ? String(channelId) : `${channelId}.${keyIndex}`;
}

/** A reservation value: the pin value it will become, and the reserving request's token. */
export function reservationValue(pin: string, token: string): string {
  return `${pin}~${token}`;
}

/** What a stored pin value says. */
export interface PinTarget {
  channelId: number;
  /** The key the pin recorded (undefined: a channel-level pin, e.g. written by 0.1). */
  keyIndex?: number;
  /** A reservation of a first request, not yet confirmed by a success. */
  provisional: boolean;
}

const TOKEN_CHAR = /^[A-Za-z0-9_-]{1,64}$/;

/** The decimal number in `text` from `start` up to `end` (at most `max` digits); -1 if not one. */
function digits(text: string, start: number, end: number, max: number): number {
  if (end <= start || end - start > max) return -1;
  let n = 0;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return -1;
    n = n * 10 + c;
  }
  return n;
}

/**
 * The channel (and key) a stored pin value names (`<id>`, `<id>.<key>`, either with `~<token>`);
 * null for a value this version does not understand. Read on every hit: no regex, no split.
 */
export function parsePin(value: unknown): PinTarget | null {
  // a custom store written for 0.1 may still answer the channel id as a number
  const text = typeof value === 'number' ? String(value) : value;
  if (typeof text !== 'string') return null;
  let end = text.indexOf('~');
  const provisional = end !== -1;
  if (provisional && !TOKEN_CHAR.test(text.slice(end + 1))) return null;
  if (!provisional) end = text.length;
  const dot = text.indexOf('.');
  const idEnd = dot !== -1 && dot < end ? dot : end;
  const channelId = digits(text, 0, idEnd, 15);
  if (channelId <= 0) return null;
  if (idEnd === end) return { channelId, keyIndex: undefined, provisional };
  const keyIndex = digits(text, idEnd + 1, end, 6);
  return keyIndex < 0 ? null : { channelId, keyIndex, provisional };
}
