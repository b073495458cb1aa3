// Affinity lookup before selection: read the pin (one store round trip), check it is still
// usable, use it, or clear it (compare-and-delete with the exact key that was read).
import type { Request, Response } from 'express';
import type { RegisteredChannel } from '../channels/registry';
import { callHook } from '../hooks';
import type { ParsedRequest } from '../request/extract';
import type { RequestRun } from '../run/request-run';
import type { Runtime } from '../runtime';
import type { Steps } from '../steps';
import { ChannelStatus, type AffinityInfo, type StaleReason } from '../types';
import { matchAffinity } from './key';
import { uniqueToken } from '../unique-token';
import { parsePin, reservationValue, type PinTarget } from './layout';

/** Why a pin cannot be used, or the group it serves in. */
function checkPin(rt: Runtime, run: RequestRun, id: number): { reason: StaleReason } | { ch: RegisteredChannel; group: string } {
  const ch = rt.registry.get(id);
  if (!ch) return { reason: 'missing' };
  if (ch.status !== ChannelStatus.Enabled) return { reason: 'disabled' };
  let group: string | undefined;
  for (const g of run.groups) {
    if (rt.registry.serves(id, g, run.model)) {
      group = g;
      break;
    }
  }
  if (group === undefined) return { reason: 'ineligible' };
  const now = Date.now();
  const unavailable = rt.health.unavailableReason(id, now);
  if (unavailable !== undefined) return { reason: unavailable };
  // at its limits: it serves nothing this request, and keeps its pin
  if (rt.limits.isFull(id, now)) return { reason: 'saturated' };
  return { ch, group };
}

/**
 * Runs affinity for a request (steps for `drive()`). Ends with true when the pinned channel was
 * set up and is now the current channel; false when selection must run (no rule, no pin, or a
 * stale pin).
 */
export function* usePin(rt: Runtime, run: RequestRun, req: Request, res: Response, parsed: ParsedRequest): Steps<boolean> {
  const { cfg } = rt;
  const match = matchAffinity(cfg.affinity.rules, {
    req, res, model: run.model, path: parsed.path, group: run.group, ctx: run.ctx, body: parsed.body,
  });
  if (!match) return false;
  run.match = match;
  const info: AffinityInfo = (run.d.affinity = { rule: match.rule.name, hit: false, used: false, cleared: false });
  const value = (yield rt.guard.readPin(cfg.store, match.key, match.rule.ttlMs)) as string | null | undefined;
  // the store failed: a miss, and no further store call before next() (one timeout at most)
  if (value === undefined) run.storeFailed = true;
  // a value this version cannot read is a miss: the next success overwrites it
  const pin = parsePin(value);
  if (pin === null) {
    rt.usage.lookup(match.rule.name, false);
    run.note(`affinity:miss rule=${match.rule.name}`);
    if (cfg.on.affinityMiss) callHook(cfg, 'affinityMiss', { req, rule: match.rule.name, fingerprint: match.fingerprint });
    return false;
  }
  info.hit = true;
  run.pinnedValue = value as string;
  // the hit path inline (no nested generator per request)
  const target = pinTarget(rt, run, pin);
  if (target !== undefined) {
    if (yield* run.trySetup(target.ch, target.group, run.pinnedKey)) {
      pinServes(rt, run, pin, target.group, 'hit');
      return true;
    }
    info.stale = run.limitRefused ? 'saturated' : 'setup_failed';
  }
  rt.usage.lookup(match.rule.name, false);
  run.stalePin = pin.channelId;
  if (info.stale === 'saturated') {
    // a full channel keeps its pin: the session returns to it when it has room
    reportStale(rt, run);
    return false;
  }
  // With coalescing the stale pin is replaced by this request's reservation in one round trip
  // (reserveSession, which reports it); without, it is cleared now.
  if (cfg.affinity.keepOnChannelDisabled || !coalescing(rt) || run.storeFailed) {
    if (!cfg.affinity.keepOnChannelDisabled) {
      // compare-and-delete with the value read: another instance may have re-pinned it meanwhile
      info.cleared = (yield rt.guard.run('clearPin', () => cfg.store.clearPin(match.key, value as string), false)) as boolean;
    }
    reportStale(rt, run);
  }
  return false;
}

/** The stale pin's note, hook and debug line, once its fate (cleared or not) is known. */
function reportStale(rt: Runtime, run: RequestRun): void {
  const channelId = run.stalePin;
  const info = run.d.affinity;
  const match = run.match;
  if (channelId === undefined || !info || !match) return;
  run.stalePin = undefined;
  const { cfg } = rt;
  const reason = info.stale as StaleReason;
  run.note(`affinity:stale(${reason}) ch=${channelId}${info.cleared ? ' cleared' : ''}`);
  callHook(cfg, 'affinityStale', { req: run.req, rule: match.rule.name, channelId, reason, cleared: info.cleared });
  if (rt.debug) cfg.logger.debug?.('stale affinity pin', { rule: match.rule.name, fingerprint: match.fingerprint, channelId, reason, cleared: info.cleared });
}

/**
 * A pin (or a reservation found) about to be used: records what it names and returns its channel
 * and group when the channel can serve; sets `affinity.stale` and returns undefined otherwise.
 */
function pinTarget(rt: Runtime, run: RequestRun, pin: PinTarget): { ch: RegisteredChannel; group: string } | undefined {
  const info = run.d.affinity as AffinityInfo;
  run.pinnedId = pin.channelId;
  run.pinnedKey = rt.cfg.affinity.keyLevel ? pin.keyIndex : undefined;
  run.provisional = pin.provisional;
  if (run.pinnedKey !== undefined) info.keyIndex = run.pinnedKey;
  const checked = checkPin(rt, run, pin.channelId);
  if ('reason' in checked) {
    info.stale = checked.reason;
    return undefined;
  }
  return checked;
}

/**
 * Uses a pin (or a reservation found): the channel when it is usable, with the key it recorded
 * while that key is enabled (another key of the same channel otherwise: the pin then moves to it).
 * Sets `affinity.stale` and returns false when the channel cannot serve.
 */
function* tryPin(rt: Runtime, run: RequestRun, pin: PinTarget, how: 'hit' | 'coalesced'): Steps<boolean> {
  const target = pinTarget(rt, run, pin);
  if (target === undefined) return false;
  if (!(yield* run.trySetup(target.ch, target.group, run.pinnedKey))) {
    (run.d.affinity as AffinityInfo).stale = run.limitRefused ? 'saturated' : 'setup_failed';
    return false;
  }
  pinServes(rt, run, pin, target.group, how);
  return true;
}

/** The pin's channel was set up: it serves this request (counters, trace, hooks). */
function pinServes(rt: Runtime, run: RequestRun, pin: PinTarget, group: string, how: 'hit' | 'coalesced'): void {
  const { cfg } = rt;
  const info = run.d.affinity as AffinityInfo;
  const match = run.match as NonNullable<RequestRun['match']>;
  info.used = true;
  info.stale = undefined;
  const { req } = run;
  const rule = match.rule.name;
  if (how === 'hit') rt.usage.lookup(rule, true);
  run.note(`affinity:${how} ch=${pin.channelId}${run.currentKeyIndex !== undefined && run.pinnedKey !== undefined ? ` key=${run.currentKeyIndex}` : ''}`);
  if (cfg.on.affinityHit) callHook(cfg, 'affinityHit', { req, rule, channelId: pin.channelId, fingerprint: match.fingerprint });
  if (cfg.on.select) callHook(cfg, 'select', { req, channel: run.observedChannel(), group, model: run.model, reason: 'affinity' });
}

function coalescing(rt: Runtime): boolean {
  return rt.cfg.affinity.coalesce && typeof rt.cfg.store.reservePin === 'function';
}

/**
 * One channel per new session (`affinity.coalesce`): after selection on a miss (or a stale pin),
 * reserve the chosen channel and key under the pin key with an add-if-absent write. A request that
 * finds another's reservation (or pin) written meanwhile uses it like a pin, so N concurrent first
 * requests of one session, on one instance or several, are served by one channel. At most one
 * more store round trip before `next()`.
 */
export function* reserveSession(rt: Runtime, run: RequestRun): Steps<void> {
  const match = run.match;
  const info = run.d.affinity;
  const cur = run.current;
  const early = run.reservation;
  run.reservation = undefined;
  if (!match || !info || info.used || !cur || run.storeFailed || !coalescing(rt)) return;
  const { cfg } = rt;
  let own: string;
  let held: string | null | undefined;
  let replacing: string | undefined;
  if (early !== undefined && early.channelId === cur.id) {
    // written beside the slot of this channel (one round trip for both): its answer is this step's
    ({ own, held, replacing } = early);
  } else {
    // written beside a channel that then failed its setup: ours to replace
    if (early !== undefined && early.held === null) run.reservedValue = early.own;
    replacing = replacedBy(rt, run);
    if (info.hit && replacing === undefined) return; // a stale pin that is kept stays as it is
    own = reservationValue(run.pinOf(cur, run.currentKeyIndex), uniqueToken());
    held = (yield rt.guard.reservePin(cfg.store, match.key, own, cfg.affinity.reserveTtlMs, replacing)) as string | null | undefined;
  }
  if (held === null) {
    run.reservedValue = own;
    if (replacing !== undefined) info.cleared = true;
    reportStale(rt, run);
    return;
  }
  reportStale(rt, run); // replaced meanwhile by another request, or the store failed: not cleared by us
  if (held === undefined) return; // the store failed: no coalescing this time
  // another request got there first: use its channel like a pin, if it can serve
  const pin = parsePin(held);
  if (pin === null) return;
  const sameKey = !cfg.affinity.keyLevel || cur.keys.length < 2 || pin.keyIndex === undefined || pin.keyIndex === run.currentKeyIndex;
  if (pin.channelId === cur.id && sameKey) {
    adopt(run, held, pin, cur.id);
    return;
  }
  const before = { value: run.pinnedValue, id: run.pinnedId, key: run.pinnedKey, provisional: run.provisional, hit: info.hit, stale: info.stale, keyIndex: info.keyIndex };
  info.hit = true;
  run.pinnedValue = held;
  if (yield* tryPin(rt, run, pin, 'coalesced')) return;
  // it cannot serve here: keep the channel selection chose (the relay's answer decides the pin)
  run.pinnedValue = before.value;
  run.pinnedId = before.id;
  run.pinnedKey = before.key;
  run.provisional = before.provisional;
  info.hit = before.hit;
  info.stale = before.stale;
  info.keyIndex = before.keyIndex;
}

/**
 * What a new reservation may replace: this request's own earlier reservation (for a channel that
 * turned out full), else a stale pin that is not kept; undefined for nothing.
 */
function replacedBy(rt: Runtime, run: RequestRun): string | undefined {
  if (run.reservedValue !== undefined) return run.reservedValue;
  const info = run.d.affinity;
  return info?.hit && !rt.cfg.affinity.keepOnChannelDisabled && info.stale !== 'saturated' ? run.pinnedValue : undefined;
}

/**
 * On a miss (or a stale pin) with coalescing, the reservation for a channel with limits is written
 * beside its slot request, so the two share one round trip (reserveSession then reads its
 * answer). Undefined when no reservation is due: no rule, a pin in use, one already started, the
 * store failed, or a kept stale pin.
 */
export function startReservation(rt: Runtime, run: RequestRun, ch: RegisteredChannel, keyIndex: number | undefined): EarlyReservation | undefined {
  const match = run.match;
  const info = run.d.affinity;
  if (!match || !info || info.used || run.storeFailed || !coalescing(rt) || run.reservation !== undefined) return undefined;
  // the pin itself (or another request's reservation) is being set up: nothing to reserve
  if (info.hit && info.stale === undefined) return undefined;
  const replacing = replacedBy(rt, run);
  if (info.hit && replacing === undefined) return undefined;
  const own = reservationValue(run.pinOf(ch, keyIndex), uniqueToken());
  return { channelId: ch.id, own, replacing, held: rt.guard.reservePin(rt.cfg.store, match.key, own, rt.cfg.affinity.reserveTtlMs, replacing) };
}

/** A reservation started beside a slot request (`startReservation`); `held` is its store answer. */
export interface EarlyReservation {
  channelId: number;
  own: string;
  replacing?: string;
  held: string | null | undefined | Promise<string | null | undefined>;
}

/**
 * Clears a stale pin whose clearing was left to the reservation (no channel was found to reserve,
 * so there is no reservation to replace it): compare-and-delete with the value read.
 */
export function* releaseStalePin(rt: Runtime, run: RequestRun): Steps<void> {
  const { cfg } = rt;
  const info = run.d.affinity;
  const match = run.match;
  const value = run.pinnedValue;
  if (run.stalePin === undefined || !match || !info || value === undefined) return;
  info.cleared = (yield rt.guard.run('clearPin', () => cfg.store.clearPin(match.key, value), false)) as boolean;
  reportStale(rt, run);
}

/** The reservation named the channel this request already holds: it is the pin now. */
function adopt(run: RequestRun, held: string, pin: PinTarget, channelId: number): void {
  const info = run.d.affinity as AffinityInfo;
  info.hit = true;
  info.used = true;
  info.stale = undefined;
  run.pinnedValue = held;
  run.pinnedId = channelId;
  run.pinnedKey = pin.keyIndex;
  run.provisional = pin.provisional;
  run.note('affinity:coalesced');
}
