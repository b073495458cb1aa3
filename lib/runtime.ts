// What a distributor instance shares between its requests: config, registry, health, key picker.
import { KeyPicker } from './channels/multi-key';
import type { ChannelRegistry } from './channels/registry';
import { HealthBook } from './health/book';
import type { Config } from './options';
import { UsageBook } from './affinity/usage';
import type { Validations } from './validations';
import { StoreGuard } from './store-guard';
import { LatencyBook } from './selection/latency';
import { LimitBook } from './selection/limits';
import { tierPick, type LiveSignals, type TierPick } from './selection/strategy';

export interface Runtime {
  cfg: Config;
  registry: ChannelRegistry;
  health: HealthBook;
  keys: KeyPicker;
  guard: StoreGuard;
  /** Requests in flight and requests currently retrying (for the retry budget). */
  counters: { active: number; retrying: number };
  debug: boolean;
  /** Per-rule lookups, hits and cached-token ratios (`affinityReport()`). */
  usage: UsageBook;
  /** Per channel and model latency averages (`lowest-latency`). */
  latency: LatencyBook;
  /** Limit holds, channels known full, in-flight counts, the overflow queue. */
  limits: LimitBook;
  /** The strategy's tier pick for a model (`weighted`: one shared function, no allocation). */
  pickFor(model: string): TierPick;
}

export function createRuntime(cfg: Config, warn: Validations['warn']): Runtime {
  const guard = new StoreGuard(cfg);
  const health = new HealthBook(cfg, cfg.registry, guard);
  const logger = cfg.logger as { isDebugEnabled?: () => boolean; level?: string };
  // Per-request debug lines only when the logger says debug is on: winston's isDebugEnabled(), a
  // `level` of debug/silly, or a custom logger without levels. `console` gets none (stdout noise).
  const debug = typeof cfg.logger.debug === 'function' && cfg.logger !== console &&
    (typeof logger.isDebugEnabled === 'function' ? logger.isDebugEnabled() : logger.level === undefined || logger.level === 'debug' || logger.level === 'silly');
  const usage = new UsageBook((rule, ratio, reports) => warn('affinityNoValue', rule.name,
    `affinity rule "${rule.name}": pinned requests cached ${(ratio * 100).toFixed(1)} % of their input tokens over ${reports} usage reports, below minCachedRatio ${rule.minCachedRatio}; the upstream does not keep a prompt cache for these sessions, so the pins concentrate load for nothing`));
  const latency = new LatencyBook(cfg.selection.latency.halfLife);
  const limits = new LimitBook(cfg, guard);
  const live: LiveSignals = { inFlight: (id) => limits.inFlight(id), usage: (id, now) => limits.usage(id, now), latency };
  const weighted = cfg.selection.strategy === 'weighted' ? tierPick(cfg, live, '') : undefined;
  return {
    cfg, registry: cfg.registry, health, keys: new KeyPicker(cfg.random), guard, counters: { active: 0, retrying: 0 }, debug, usage, latency, limits,
    pickFor: (model) => weighted ?? tierPick(cfg, live, model),
  };
}
