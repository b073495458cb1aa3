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

/** A pin's value for a channel: its id, in decimal (what version 0.1 stored, so 0.1 pins still read). */
export function pinValue(channelId: number): string {
  return String(channelId);
}

/** The channel a stored pin value names; null for a value this version does not understand. */
export function pinnedChannel(value: unknown): number | null {
  // a custom store written for 0.1 may still answer the channel id as a number
  const text = typeof value === 'number' ? String(value) : value;
  if (typeof text !== 'string' || !/^\d{1,15}$/.test(text)) return null;
  const n = Number(text);
  return n > 0 ? n : null;
}
