// MemoryStore: the embedded default store on node-cache (no clones, TTLs in ms at the interface).
import { ruleNameOfPinKey } from '../affinity/key';
import { EventEmitter } from 'node:events';
import NodeCache from 'node-cache';
import type { ChannelStatus } from '../types';
import type { CooldownPolicy, HealthSnapshot, Store, StoreEvent } from './store';

export interface MemoryStoreOptions {
  /** Key prefix (kept for symmetry with RedisStore and for validations). Default `'ecd:'`. */
  prefix?: string;
  /** Most pins kept; further pins are refused (logged as store errors). Default 1,000,000. */
  maxPins?: number;
  /** Seconds between expired-pin sweeps. Default 60. */
  checkPeriodSeconds?: number;
}

/**
 * In-process store. Pins and health are shared by every distributor of this process that uses
 * the same instance, and by nothing else: use `RedisStore` when several instances run.
 */
export class MemoryStore implements Store {
  readonly localKeys = true;
  readonly prefix: string;
  private pins: NodeCache;
  private failures = new Map<number, { count: number; since: number }>();
  private cooldowns = new Map<number, number>();
  private statuses = new Map<number, ChannelStatus>();
  private keys = new Map<number, number[]>();
  private events = new EventEmitter();

  constructor(options: MemoryStoreOptions = {}) {
    this.prefix = options.prefix ?? 'ecd:';
    this.pins = new NodeCache({
      stdTTL: 0,
      checkperiod: options.checkPeriodSeconds ?? 60,
      useClones: false,
      maxKeys: options.maxPins ?? 1_000_000,
    });
    this.events.setMaxListeners(0);
  }

  async getPin(key: string, refreshTtlMs?: number): Promise<number | null> {
    return this.getPinNow(key, refreshTtlMs);
  }

  /**
   * @internal `getPin()` without the promise (the distributor's fast path for this store). The
   * TTL slides in steps of at most 1 s (a tenth of the TTL when that is shorter): node-cache's
   * `ttl()` allocates a new entry, and a hot session is read many times a second.
   */
  getPinNow(key: string, refreshTtlMs?: number): number | null {
    const v = this.pins.get<number>(key);
    if (v === undefined) return null;
    if (refreshTtlMs && refreshTtlMs > 0) {
      const expires = this.pins.getTtl(key);
      if (!expires || Date.now() + refreshTtlMs - expires >= Math.min(1000, refreshTtlMs / 10)) this.pins.ttl(key, refreshTtlMs / 1000);
    }
    return v;
  }

  async setPin(key: string, channelId: number, ttlMs: number): Promise<void> {
    this.pins.set(key, channelId, ttlMs / 1000);
  }

  async clearPin(key: string, expectedChannelId: number): Promise<boolean> {
    if (this.pins.get<number>(key) !== expectedChannelId) return false;
    return this.pins.del(key) > 0;
  }

  async recordFailure(channelId: number, policy: CooldownPolicy, now: number): Promise<number | null> {
    let f = this.failures.get(channelId);
    if (!f || now - f.since > policy.windowMs) {
      f = { count: 0, since: now };
      this.failures.set(channelId, f);
    }
    f.count++;
    if (f.count < policy.failures) return null;
    this.failures.delete(channelId);
    const until = now + policy.durationMs;
    this.cooldowns.set(channelId, until);
    this.emit({ type: 'cooldown', channelId, until });
    return until;
  }

  async recordSuccess(channelId: number): Promise<void> {
    this.failures.delete(channelId);
  }

  async clearCooldown(channelId: number): Promise<void> {
    this.cooldowns.delete(channelId);
    this.failures.delete(channelId);
    this.emit({ type: 'cooldown', channelId, until: 0 });
  }

  async setOverride(channelId: number, patch: { status?: ChannelStatus | null; disabledKeys?: number[] }): Promise<void> {
    if (patch.status !== undefined) {
      if (patch.status === null) this.statuses.delete(channelId);
      else this.statuses.set(channelId, patch.status);
      this.emit({ type: 'status', channelId, status: patch.status });
    }
    if (patch.disabledKeys !== undefined) {
      if (patch.disabledKeys.length === 0) this.keys.delete(channelId);
      else this.keys.set(channelId, [...patch.disabledKeys]);
      this.emit({ type: 'keys', channelId, disabledKeys: [...patch.disabledKeys] });
    }
  }

  async loadHealth(): Promise<HealthSnapshot> {
    const now = Date.now();
    const cooldowns: Record<number, number> = {};
    for (const [id, until] of this.cooldowns) {
      if (until > now) cooldowns[id] = until;
      else this.cooldowns.delete(id);
    }
    return {
      cooldowns,
      statuses: Object.fromEntries(this.statuses),
      disabledKeys: Object.fromEntries([...this.keys].map(([k, v]) => [k, [...v]])),
    };
  }

  subscribe(listener: (event: StoreEvent) => void): () => void {
    this.events.on('event', listener);
    return () => this.events.off('event', listener);
  }

  async clearPins(rule?: string): Promise<number> {
    const keys = rule === undefined ? this.pins.keys() : this.pins.keys().filter((k) => k.startsWith(`aff:${rule}:`));
    return this.pins.del(keys);
  }

  async countPins(): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const k of this.pins.keys()) {
      const name = ruleNameOfPinKey(k);
      out[name] = (out[name] ?? 0) + 1;
    }
    return out;
  }

  /** Number of live pins (for tests and metrics). */
  get pinCount(): number {
    return this.pins.keys().length;
  }

  shutdown(): void {
    this.pins.close();
    this.events.removeAllListeners();
  }

  private emit(e: StoreEvent): void {
    this.events.emit('event', e);
  }
}
