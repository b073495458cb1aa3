// Affinity key derivation: the first matching rule with a value decides; the value is bounded,
// scoped by rule / model / group / caller, and hashed before it reaches a store.
import * as crypto from 'node:crypto';
import type { Request, Response } from 'express';
import { getNested, getPath, valueText } from '../request/json-path';
import { queryParam } from '../request/extract';
import type { RequestContext } from '../types';
import type { CompiledRule, CompiledSource } from './rules';

/** Values are matched against `valueRegex` only up to this many characters; longer models and paths match no rule. */
export const MAX_MATCHED_VALUE = 1024;

export class AffinityMatch {
  private fp?: string;
  constructor(
    readonly rule: CompiledRule,
    /** The store key (hashed; never the raw value). */
    readonly key: string,
    /** The raw value: used only to redact it from error messages; never logged or stored. */
    readonly rawValue: string,
  ) {}

  /** A short non-reversible fingerprint for logs and hooks (computed only when asked for). */
  get fingerprint(): string {
    return (this.fp ??= fingerprint(this.rawValue));
  }
}

export interface KeyInput {
  req: Request;
  res: Response;
  model: string;
  path: string;
  group: string;
  ctx: RequestContext;
  body?: Record<string, unknown>;
}

function sourceValue(s: CompiledSource, input: KeyInput): string {
  switch (s.type) {
    case 'header': {
      const h = input.req.headers[s.key];
      return (Array.isArray(h) ? h[0] ?? '' : h ?? '').trim();
    }
    case 'query':
      return (queryParam(input.req, s.key) ?? '').trim();
    case 'context': {
      const v = Object.prototype.hasOwnProperty.call(input.ctx, s.key) ? input.ctx[s.key] : (input.res.locals as Record<string, unknown>)[s.key];
      if (typeof v === 'number') return Number.isFinite(v) && v > 0 ? String(v) : '';
      return typeof v === 'string' ? v.trim() : '';
    }
    case 'body': {
      if (!input.body) return '';
      const v = getPath(input.body, s.path);
      if (!s.nested) return valueText(v);
      return valueText(getNested(v, s.nested));
    }
  }
}

function anyMatches(patterns: readonly RegExp[], text: string): boolean {
  for (const r of patterns) if (r.test(text)) return true;
  return false;
}

function ruleMatches(rule: CompiledRule, input: KeyInput): boolean {
  if (rule.neverMatches) return false;
  // The model and the path are the caller's: operator patterns never run over more than
  // MAX_MATCHED_VALUE characters of them (an unanchored `gpt-.*-mini` is quadratic in the
  // length of a hostile model). No real model or API path is that long: such a request has no
  // affinity and goes on to normal selection.
  if (input.model.length > MAX_MATCHED_VALUE || input.path.length > MAX_MATCHED_VALUE) return false;
  if (!anyMatches(rule.modelRegex, input.model)) return false;
  if (rule.pathRegex && !anyMatches(rule.pathRegex, input.path)) return false;
  if (rule.userAgentInclude) {
    const ua = (input.req.headers['user-agent'] ?? '').toLowerCase();
    if (!ua || !rule.userAgentInclude.some((u) => ua.includes(u))) return false;
  }
  return true;
}

/** `crypto.hash()` (Node >= 20.12): a one-shot digest without a Hash object per call. */
const oneShot = (crypto as { hash?: (alg: string, data: string, enc: 'hex' | 'base64url') => string }).hash;

function sha256(text: string): string {
  return oneShot ? oneShot('sha256', text, 'base64url') : crypto.createHash('sha256').update(text).digest('base64url');
}

/**
 * Recent pin keys, by value. A session sends the same value on every request, and the SHA-256 (a
 * native call) was the largest single cost of the middleware under load; handing out the same key
 * string also lets the store's lookup reuse it as is. An entry is used only when the rule and every
 * other part of the scope are equal too. Two generations of at most 2,048 entries each: when the
 * young one is full it becomes the old one and the old one is dropped, so a miss costs one Map
 * insert (no per-entry eviction), a key in use moves back to the young generation, and values over
 * 512 characters are not kept. Pure, so one cache serves every distributor of the process.
 */
const GENERATION_MAX = 2048;
const KEY_VALUE_MAX = 512;
interface KeyEntry {
  rule: CompiledRule;
  model: string;
  group: string;
  caller: string;
  key: string;
}
let youngKeys = new Map<string, KeyEntry>();
let oldKeys = new Map<string, KeyEntry>();

function rememberKey(value: string, entry: KeyEntry): void {
  if (youngKeys.size >= GENERATION_MAX) {
    oldKeys = youngKeys;
    youngKeys = new Map();
  }
  youngKeys.set(value, entry);
}

/**
 * The pin key `aff:<rule part>:<SHA-256 of the scope>`. The scope is length-prefixed parts, so no
 * choice of model, group or value can forge another caller's scope.
 */
function pinKeyOf(rule: CompiledRule, model: string, group: string, caller: string, value: string): string {
  // only the parts the rule keys on: a model the rule leaves out does not make a new key
  const m = rule.includeModelName ? model : '';
  const g = rule.includeUsingGroup ? group : '';
  const cacheable = value.length <= KEY_VALUE_MAX;
  let e = cacheable ? youngKeys.get(value) : undefined;
  if (e === undefined && cacheable) {
    e = oldKeys.get(value);
    if (e !== undefined) rememberKey(value, e);
  }
  if (e !== undefined && e.rule === rule && e.model === m && e.group === g && e.caller === caller) return e.key;
  const name = rule.includeRuleName ? rule.name : '';
  const key = rule.keyPrefix + sha256(`${name.length}:${name}${m.length}:${m}${g.length}:${g}${caller.length}:${caller}${value.length}:${value}`);
  if (cacheable) rememberKey(value, { rule, model: m, group: g, caller, key });
  return key;
}

/** Short hex fingerprint of a value (for logs): not reversible, stable across instances. */
export function fingerprint(value: string): string {
  return (oneShot ? oneShot('sha256', value, 'hex') : crypto.createHash('sha256').update(value).digest('hex')).slice(0, 12);
}

/** Finds the deciding rule and derives its key, or undefined when no rule yields a value. */
export function matchAffinity(rules: readonly CompiledRule[], input: KeyInput): AffinityMatch | undefined {
  for (const rule of rules) {
    if (!ruleMatches(rule, input)) continue;
    let value = '';
    for (const s of rule.sources) {
      value = sourceValue(s, input);
      if (value) break;
    }
    if (!value) continue;
    if (rule.valueRegex && !rule.valueRegex.test(value.length > MAX_MATCHED_VALUE ? value.slice(0, MAX_MATCHED_VALUE) : value)) continue;
    const caller = input.ctx.tokenId !== undefined && input.ctx.tokenId !== null && input.ctx.tokenId !== ''
      ? `t:${String(input.ctx.tokenId)}`
      : input.ctx.userId !== undefined && input.ctx.userId !== null && input.ctx.userId !== '' ? `u:${String(input.ctx.userId)}` : '';
    return new AffinityMatch(rule, pinKeyOf(rule, input.model, input.group, caller, value), value);
  }
  return undefined;
}
