// Strategies that choose inside one priority tier (selection.strategy, API.md 11.4). `weighted`
// is select.ts's O(1) pick; the others look at every eligible channel of the tier once (O(n)) and
// read only local state: in-flight counts, latency averages, the last known use of the limits.
import type { RegisteredChannel, Tier } from '../channels/registry';
import type { Config } from '../options';
import type { LatencyBook } from './latency';
import { pickByWeight, pickFromTier, type Eligible } from './select';

/** Chooses one eligible channel of a tier. */
export type TierPick = (tier: Tier, eligible: Eligible, random: () => number) => RegisteredChannel | undefined;

/** What the adaptive strategies read (per instance). */
export interface LiveSignals {
  /** Requests in flight per channel on this instance. */
  inFlight(id: number): number;
  /** The channel's most used limit as a fraction (0 without limits). */
  usage(id: number, now: number): number;
  latency: LatencyBook;
}

/** The eligible channels with the lowest score, weight breaking ties. */
function lowest(tier: Tier, eligible: Eligible, random: () => number, score: (ch: RegisteredChannel) => number): RegisteredChannel | undefined {
  let best = Infinity;
  let pool: RegisteredChannel[] = [];
  for (const ch of tier.channels) {
    if (!eligible(ch.id)) continue;
    const s = score(ch);
    if (s < best) {
      best = s;
      pool = [ch];
    } else if (s === best) pool.push(ch);
  }
  return pickByWeight(pool, random);
}

/**
 * `lowest-latency`: channels with fewer than `minSamples` samples get an `explore` share of picks
 * (all of them while no channel has enough); otherwise the channels within `buffer` of the best
 * average are picked by weight, and the explore share goes to the ones outside it.
 */
function lowestLatency(tier: Tier, eligible: Eligible, random: () => number, model: string, live: LiveSignals, o: Config['selection']['latency']): RegisteredChannel | undefined {
  const stats = live.latency.ofModel(model);
  const sampled: RegisteredChannel[] = [];
  const unsampled: RegisteredChannel[] = [];
  let best = Infinity;
  for (const ch of tier.channels) {
    if (!eligible(ch.id)) continue;
    const s = stats?.get(ch.id);
    if (s === undefined || s.n < o.minSamples) unsampled.push(ch);
    else {
      sampled.push(ch);
      if (s.avg < best) best = s.avg;
    }
  }
  if (sampled.length === 0) return pickByWeight(unsampled, random);
  const explore = random() < o.explore;
  if (explore && unsampled.length > 0) return pickByWeight(unsampled, random);
  const limit = best * (1 + o.buffer);
  const near: RegisteredChannel[] = [];
  const far: RegisteredChannel[] = [];
  for (const ch of sampled) ((stats?.get(ch.id)?.avg ?? Infinity) <= limit ? near : far).push(ch);
  // with every channel measured, the explore share re-measures the slower ones: a channel that
  // was slow once (a cold connection, a bad minute) is seen again when it recovers
  if (explore && far.length > 0) return pickByWeight(far, random);
  return pickByWeight(near, random);
}

/** The tier pick of the configured strategy, for one request's model. */
export function tierPick(cfg: Config, live: LiveSignals, model: string): TierPick {
  switch (cfg.selection.strategy) {
    case 'least-busy':
      return (tier, eligible, random) => lowest(tier, eligible, random, (ch) => live.inFlight(ch.id));
    case 'least-usage': {
      const now = Date.now();
      return (tier, eligible, random) => lowest(tier, eligible, random, (ch) => live.usage(ch.id, now));
    }
    case 'lowest-latency':
      return (tier, eligible, random) => lowestLatency(tier, eligible, random, model, live, cfg.selection.latency);
    default:
      return pickFromTier;
  }
}
