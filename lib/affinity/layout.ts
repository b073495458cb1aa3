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

const PIN_VALUE = /^(\d{1,15})(?:\.(\d{1,6}))?(~[A-Za-z0-9_-]{1,64})?$/;

/** The channel (and key) a stored pin value names; null for a value this version does not understand. */
export function parsePin(value: unknown): PinTarget | null {
  // a custom store written for 0.1 may still answer the channel id as a number
  const text = typeof value === 'number' ? String(value) : value;
  if (typeof text !== 'string') return null;
  const m = PIN_VALUE.exec(text);
  if (!m) return null;
  const channelId = Number(m[1]);
  if (channelId <= 0) return null;
  return { channelId, keyIndex: m[2] === undefined ? undefined : Number(m[2]), provisional: m[3] !== undefined };
}
