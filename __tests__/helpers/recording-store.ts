// A Store that delegates to a MemoryStore and records every call (for asserting exact keys).
import { MemoryStore } from '../../lib';
import type { ChannelStatus, CooldownPolicy, HealthSnapshot, Store, StoreEvent } from '../../lib';

export interface StoreCall {
  op: string;
  args: unknown[];
}

export class RecordingStore implements Store {
  readonly inner: MemoryStore;
  readonly calls: StoreCall[] = [];
  /** Optional interceptor run after getPin delegated (e.g. to simulate a concurrent re-pin). */
  afterGetPin?: (key: string, value: string | null) => Promise<void> | void;

  constructor(inner = new MemoryStore()) {
    this.inner = inner;
  }

  get localKeys(): boolean {
    return this.inner.localKeys;
  }
  get prefix(): string {
    return this.inner.prefix;
  }

  /** Calls of one operation. */
  of(op: string): unknown[][] {
    return this.calls.filter((c) => c.op === op).map((c) => c.args);
  }

  /** Every key passed to a pin operation. */
  pinKeys(): string[] {
    return this.calls.filter((c) => c.op.endsWith('Pin')).map((c) => c.args[0] as string);
  }

  async getPin(key: string, refreshTtlMs?: number): Promise<string | null> {
    this.calls.push({ op: 'getPin', args: [key, refreshTtlMs] });
    const v = await this.inner.getPin(key, refreshTtlMs);
    if (this.afterGetPin) await this.afterGetPin(key, v);
    return v;
  }
  async setPin(key: string, value: string, ttlMs: number): Promise<void> {
    this.calls.push({ op: 'setPin', args: [key, value, ttlMs] });
    return this.inner.setPin(key, value, ttlMs);
  }
  async clearPin(key: string, expectedValue: string): Promise<boolean> {
    this.calls.push({ op: 'clearPin', args: [key, expectedValue] });
    return this.inner.clearPin(key, expectedValue);
  }
  async recordFailure(channelId: number, policy: CooldownPolicy, now: number): Promise<number | null> {
    this.calls.push({ op: 'recordFailure', args: [channelId, policy, now] });
    return this.inner.recordFailure(channelId, policy, now);
  }
  async setOverride(channelId: number, patch: { status?: ChannelStatus | null; disabledKeys?: number[] }): Promise<void> {
    this.calls.push({ op: 'setOverride', args: [channelId, patch] });
    return this.inner.setOverride(channelId, patch);
  }
  async clearCooldown(channelId: number): Promise<void> {
    this.calls.push({ op: 'clearCooldown', args: [channelId] });
    return this.inner.clearCooldown(channelId);
  }
  async loadHealth(): Promise<HealthSnapshot> {
    return this.inner.loadHealth();
  }
  subscribe(listener: (event: StoreEvent) => void): () => void {
    return this.inner.subscribe(listener);
  }
  async clearPins(keyPrefix?: string): Promise<number> {
    return this.inner.clearPins(keyPrefix);
  }
  async countPins(groupOf: (key: string) => string): Promise<Record<string, number>> {
    return this.inner.countPins(groupOf);
  }
  shutdown(): void {
    this.inner.shutdown();
  }
}

/** Lets pending finish handlers and store promises run. */
export const settle = () => new Promise<void>((r) => setImmediate(r));
