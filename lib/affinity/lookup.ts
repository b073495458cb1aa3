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
import { pinnedChannel } from './layout';

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
  if (rt.health.isCooling(id)) return { reason: 'cooling' };
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
  const value = (yield rt.guard.readPin(cfg.store, match.key, match.rule.ttlMs)) as string | null;
  // a value this version cannot read is a miss: the next success overwrites it
  const pinned = pinnedChannel(value);
  if (pinned === null) {
    rt.usage.lookup(match.rule.name, false);
    run.note(`affinity:miss rule=${match.rule.name}`);
    if (cfg.on.affinityMiss) callHook(cfg, 'affinityMiss', { req, rule: match.rule.name, fingerprint: match.fingerprint });
    return false;
  }
  info.hit = true;
  run.pinnedId = pinned;
  run.pinnedValue = value as string;
  const checked = checkPin(rt, run, pinned);
  let stale: StaleReason;
  if ('reason' in checked) stale = checked.reason;
  else {
    if (yield* run.trySetup(checked.ch, checked.group)) {
      info.used = true;
      rt.usage.lookup(match.rule.name, true);
      run.note(`affinity:hit ch=${pinned}`);
      if (cfg.on.affinityHit) callHook(cfg, 'affinityHit', { req, rule: match.rule.name, channelId: pinned, fingerprint: match.fingerprint });
      if (cfg.on.select) callHook(cfg, 'select', { req, channel: run.observedChannel(), group: checked.group, model: run.model, reason: 'affinity' });
      return true;
    }
    stale = 'setup_failed';
  }
  info.stale = stale;
  rt.usage.lookup(match.rule.name, false);
  if (!cfg.affinity.keepOnChannelDisabled) {
    // compare-and-delete with the value read: another instance may have re-pinned it meanwhile
    info.cleared = (yield rt.guard.run('clearPin', () => cfg.store.clearPin(match.key, value as string), false)) as boolean;
  }
  run.note(`affinity:stale(${stale}) ch=${pinned}${info.cleared ? ' cleared' : ''}`);
  callHook(cfg, 'affinityStale', { req, rule: match.rule.name, channelId: pinned, reason: stale, cleared: info.cleared });
  if (rt.debug) cfg.logger.debug?.('stale affinity pin', { rule: match.rule.name, fingerprint: match.fingerprint, channelId: pinned, reason: stale, cleared: info.cleared });
  return false;
}
