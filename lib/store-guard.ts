// Store calls go through a guard: an error or rejection becomes a fallback value, a rate-limited
// warning and a `storeError` hook, so a store outage degrades service and never fails a request.
import { callHook } from './hooks';
import type { SlotReply, SlotRequest, Store } from './stores/store';
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
   * else through `getPin`; failing soft either way (`undefined`: the store failed, which the
   * caller treats as a miss and as a reason to make no more store calls for the request). The one
   * pin-read path of the distributor.
   */
  readPin(store: Store, key: string, refreshTtlMs: number): string | null | undefined | Promise<string | null | undefined> {
    return this.either('getPin', store.getPinSync && (() => store.getPinSync?.(key, refreshTtlMs)), () => store.getPin(key, refreshTtlMs));
  }

  /**
   * A reservation (`reservePin`), synchronous when the store can (`reservePinSync`): null when
   * written, the value held otherwise, `undefined` when the store failed or cannot reserve.
   */
  reservePin(store: Store, key: string, value: string, ttlMs: number, replacing?: string): string | null | undefined | Promise<string | null | undefined> {
    const reserve = store.reservePin;
    if (!reserve) return undefined;
    return this.either('reservePin', store.reservePinSync && (() => store.reservePinSync?.(key, value, ttlMs, replacing)), () => reserve.call(store, key, value, ttlMs, replacing));
  }

  /** A slot under a channel's limits (`acquireSlot`), synchronous when the store can; `undefined` when the store failed. */
  acquireSlot(store: Store, req: SlotRequest): SlotReply | undefined | Promise<SlotReply | undefined> {
    const acquire = store.acquireSlot;
    if (!acquire) return undefined;
    return this.either('acquireSlot', store.acquireSlotSync && (() => store.acquireSlotSync?.(req)), () => acquire.call(store, req));
  }

  /** `sync()` when given and it answers (not undefined), else `call()`; a failure of either is `undefined`. */
  private either<T>(operation: string, sync: (() => T | undefined) | undefined | false, call: () => Promise<T>): T | undefined | Promise<T | undefined> {
    if (sync) {
      try {
        const v = sync();
        if (v !== undefined) return v;
      } catch (e) {
        this.report(operation, e);
        return undefined;
      }
    }
    return this.run<T | undefined>(operation, call, undefined);
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
