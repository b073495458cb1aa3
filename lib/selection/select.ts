// Pure channel selection: priority tiers, weighted random inside a tier, exclusion by predicate.
// No I/O; the random source is injected. A pick is O(1) expected (guide table), whatever the tier size.
import type { RegisteredChannel, Tier } from '../channels/registry';

/** Is the channel with this id eligible (not tried, not cooling)? Id-based to stay cache-friendly. */
export type Eligible = (id: number) => boolean;

const REJECTION_TRIES = 8;

function clampIndex(x: number, n: number): number {
  const i = Math.floor(x);
  return i < 0 ? 0 : i >= n ? n - 1 : i;
}

/**
 * First index whose cumulative weight exceeds `u * total` (weight-0 channels are never hit).
 * Starts from the tier's guide entry, so the expected walk is O(1) whatever the tier size.
 */
function weightedIndex(packed: Float64Array, n: number, total: number, u: number): number {
  const r = u * total;
  let i = packed[3 * clampIndex(u * n, n) + 1];
  while (i < n - 1 && packed[3 * i] <= r) i++;
  return i;
}

/**
 * Weighted pick among the eligible channels of one tier. Weights are proportional; when every
 * eligible channel has weight 0 they get equal chances (the reference's smoothing).
 */
export function pickFromTier(tier: Tier, eligible: Eligible, random: () => number): RegisteredChannel | undefined {
  const { channels, packed, totalWeight } = tier;
  const n = channels.length;
  // Rejection sampling over the whole tier: exact for the eligible subset, and independent of n.
  for (let k = 0; k < REJECTION_TRIES; k++) {
    const i = totalWeight > 0 ? weightedIndex(packed, n, totalWeight, Math.min(random(), 0.9999999999999999)) : clampIndex(random() * n, n);
    if (eligible(packed[3 * i + 2])) return channels[i];
  }
  // Many excluded: filter once and pick exactly among what is left.
  const pool: RegisteredChannel[] = [];
  for (let i = 0; i < n; i++) if (eligible(packed[3 * i + 2])) pool.push(channels[i]);
  return pickByWeight(pool, random);
}

/**
 * A weighted pick among `pool` (undefined when empty); equal chances when every weight is 0 (the
 * reference's smoothing). Also the tie-break of the adaptive strategies (./strategy.ts).
 */
export function pickByWeight(pool: readonly RegisteredChannel[], random: () => number): RegisteredChannel | undefined {
  if (pool.length === 0) return undefined;
  let sum = 0;
  for (const ch of pool) sum += ch.weight;
  if (sum === 0) return pool[clampIndex(random() * pool.length, pool.length)];
  let r = Math.min(random(), 0.9999999999999999) * sum;
  for (const ch of pool) {
    r -= ch.weight;
    if (r < 0) return ch;
  }
  return pool[pool.length - 1];
}

export type TierStrategy = 'restart' | 'descend';

/**
 * Picks from the highest tier that has an eligible channel ('restart'), or, for 'descend', from
 * tier `startTier` downwards and then upwards (the reference's one-tier-down-per-attempt).
 */
export function selectChannel(
  tiers: readonly Tier[] | undefined,
  eligible: Eligible,
  random: () => number,
  strategy: TierStrategy = 'restart',
  startTier = 0,
  pickIn: (tier: Tier, eligible: Eligible, random: () => number) => RegisteredChannel | undefined = pickFromTier,
): RegisteredChannel | undefined {
  if (!tiers || tiers.length === 0) return undefined;
  // `!== undefined`, not truthiness, below: a truthiness test reads the channel object's map, a
  // cache miss per pick on a large tier that the pick itself does not need (the caller reads it).
  if (strategy === 'restart' || startTier <= 0) {
    for (const tier of tiers) {
      const ch = pickIn(tier, eligible, random);
      if (ch !== undefined) return ch;
    }
    return undefined;
  }
  const start = Math.min(startTier, tiers.length - 1);
  for (let t = start; t < tiers.length; t++) {
    const ch = pickIn(tiers[t], eligible, random);
    if (ch !== undefined) return ch;
  }
  for (let t = start - 1; t >= 0; t--) {
    const ch = pickIn(tiers[t], eligible, random);
    if (ch !== undefined) return ch;
  }
  return undefined;
}
