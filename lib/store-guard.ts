// Store calls go through a guard: an error or rejection becomes a fallback value, a rate-limited
// warning and a `storeError` hook, so a store outage degrades service and never fails a request.
import { callHook } from './hooks';
import type { Store } from './stores/store';
import type { DistributorHooks, Logger } from './types';

const WARN_EVERY_MS = 10_000;

export class StoreGuard {
  private lastWarn = new Map<string, number>();
  private suppressed = new Map<string, number>();
  constructor(private readonly cfg: { on: DistributorHooks; logger: Logger }) {}

  async run<T>(operation: string, call: () => Promise<T>, fallback: T): Promise<T> {
    try {
      return await call();
    } catch (e) {
      this.report(operation, e);
      return fallback;
    }
  }

  /**
   * A pin lookup: answered synchronously when the store can (`getPinSync`, an in-process store),
   * else through `getPin`; failing soft either way. The one pin-read path of the distributor.
   */
  readPin(store: Store, key: string, refreshTtlMs: number): string | null | Promise<string | null> {
    if (store.getPinSync) {
      try {
        const v = store.getPinSync(key, refreshTtlMs);
        if (v !== undefined) return v;
      } catch (e) {
        this.report('getPin', e);
        return null;
      }
    }
    return this.run('getPin', () => store.getPin(key, refreshTtlMs), null);
  }

  report(operation: string, e: unknown): void {
    const error = e instanceof Error ? e : new Error(String(e));
    callHook(this.cfg, 'storeError', { operation, error });
    const now = Date.now();
    const last = this.lastWarn.get(operation) ?? 0;
    if (now - last >= WARN_EVERY_MS) {
      const suppressed = this.suppressed.get(operation) ?? 0;
      this.lastWarn.set(operation, now);
      this.suppressed.set(operation, 0);
      try {
        this.cfg.logger.warn('store error: continuing without it', { operation, error: error.message, suppressed });
      } catch {
        /* a throwing logger must not turn a store error into an unhandled rejection */
      }
    } else {
      this.suppressed.set(operation, (this.suppressed.get(operation) ?? 0) + 1);
    }
  }
}
