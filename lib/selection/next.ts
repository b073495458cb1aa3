// Which channel comes next: the first pick, a fallback after a setup failure and the channel after
// an upstream failure all ask here. Eligible channels serve the group and model, are enabled (the
// registry's tiers hold only those), not tried in this request and not cooling down; the groups
// are walked in order (an `auto` request's groups), and inside a group `selectChannel` chooses by
// tier strategy and weight.
import type { RegisteredChannel } from '../channels/registry';
import type { Runtime } from '../runtime';
import type { RequestContext } from '../types';
import { selectChannel } from './select';

export interface NextChannel {
  ch?: RegisteredChannel;
  group?: string;
  /** The last group looked at (named in the 503 of an `auto` request). */
  lastGroup?: string;
  /** A channel was passed over because it is known to be at its limits (selection.overflow applies). */
  full?: boolean;
}

/**
 * The next eligible channel over `groups`: not tried, not cooling or ejected, not known to be at
 * its limits, chosen inside its tier by `selection.strategy`. `startTier` applies to the first
 * (current) group; a group moved on to starts at its top tier.
 */
export function nextChannel(rt: Runtime, model: string, tried: readonly number[], groups: readonly string[], startTier = 0): NextChannel {
  const { registry, health, cfg, limits } = rt;
  const now = Date.now();
  let full = false;
  const eligible = (id: number) => {
    if (tried.includes(id) || health.unavailable(id, now)) return false;
    if (limits.isFull(id, now)) {
      full = true;
      return false;
    }
    return true;
  };
  const pick = rt.pickFor(model);
  let lastGroup: string | undefined;
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i];
    lastGroup = g;
    const ch = selectChannel(registry.tiers(g, model), eligible, cfg.random, cfg.retry.tierStrategy, i === 0 ? startTier : 0, pick);
    if (ch !== undefined) return { ch, group: g, lastGroup, full };
  }
  return { lastGroup, full };
}

/**
 * The groups a retry may use: the request's groups, except that an `auto` request stays in the
 * group it was served from unless the caller allows `crossGroupRetry` (then that group and the
 * ones after it).
 */
export function retryGroups(group: string, groups: readonly string[], selectedGroup: string, ctx: RequestContext): readonly string[] {
  if (group !== 'auto') return groups;
  if (!ctx.crossGroupRetry) return [selectedGroup];
  const i = groups.indexOf(selectedGroup);
  return i === -1 ? groups : groups.slice(i);
}

/**
 * The tier a retry starts at: the highest with an untried channel (`restart`), or one tier down
 * per upstream attempt made in the current group (`descend`, the reference's order).
 */
export function retryStartTier(rt: Runtime, upstreamAttemptsInGroup: number): number {
  return rt.cfg.retry.tierStrategy === 'descend' ? upstreamAttemptsInGroup : 0;
}
