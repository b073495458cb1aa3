// Store calls go through a guard: an error or rejection becomes a fallback value, a rate-limited
// warning and a `storeError` hook, so a store outage degrades service and never fails a request.
import { callHook } from './hooks';
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
