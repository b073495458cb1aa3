// What a distributor instance shares between its requests: config, registry, health, key picker.
import { KeyPicker } from './channels/multi-key';
import type { ChannelRegistry } from './channels/registry';
import { HealthBook } from './health/book';
import type { Config } from './options';
import { StoreGuard } from './store-guard';

export interface Runtime {
  cfg: Config;
  registry: ChannelRegistry;
  health: HealthBook;
  keys: KeyPicker;
  guard: StoreGuard;
  /** Requests in flight and requests currently retrying (for the retry budget). */
  counters: { active: number; retrying: number };
  debug: boolean;
}

export function createRuntime(cfg: Config): Runtime {
  const guard = new StoreGuard(cfg);
  const health = new HealthBook(cfg, cfg.registry, guard);
  const logger = cfg.logger as { isDebugEnabled?: () => boolean; level?: string };
  // Per-request debug lines only when the logger says debug is on: winston's isDebugEnabled(), a
  // `level` of debug/silly, or a custom logger without levels. `console` gets none (stdout noise).
  const debug = typeof cfg.logger.debug === 'function' && cfg.logger !== console &&
    (typeof logger.isDebugEnabled === 'function' ? logger.isDebugEnabled() : logger.level === undefined || logger.level === 'debug' || logger.level === 'silly');
  return { cfg, registry: cfg.registry, health, keys: new KeyPicker(cfg.random), guard, counters: { active: 0, retrying: 0 }, debug };
}
