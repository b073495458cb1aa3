// The Store interface: pins (opaque key -> opaque value, both built by affinity/) and shared
// channel health.
import type { ChannelStatus } from '../types';

/** Cooldown policy passed to `recordFailure`. */
export interface CooldownPolicy {
  failures: number;
  windowMs: number;
  durationMs: number;
}

/** Shared health overrides and cooldowns, as `loadHealth()` returns them. */
export interface HealthSnapshot {
  /** channel id -> epoch ms the cooldown ends */
  cooldowns: Record<number, number>;
  /** channel id -> status set by health rules or `registry.setStatus` on some instance */
  statuses: Record<number, ChannelStatus>;
  /** channel id -> disabled key indexes of a multi-key channel */
  disabledKeys: Record<number, number[]>;
  /** Timed marks (`setMark`): outlier ejections and cooling keys. Optional for custom stores. */
  marks?: HealthMark[];
}

/**
 * A timed health mark shared like a cooldown: an outlier ejection of a channel (`eject`, with how
 * many ejections in a row) or a cooling key of a multi-key channel (`key`, `retry.rotateKey`).
 */
export interface HealthMark {
  kind: 'eject' | 'key';
  channelId: number;
  /** The key index (`key` marks). */
  keyIndex?: number;
  /** Epoch ms the mark ends. */
  until: number;
  /** Consecutive ejections (`eject` marks). */
  count?: number;
}

/** One request for a slot under a channel's limits (API.md 11.4): the candidate keys of one channel. */
export interface SlotRequest {
  /** Opaque limit keys, one per candidate key of the channel, in the order to try them. */
  keys: readonly string[];
  /** 0 for a limit that is not set. */
  rpm: number;
  tpm: number;
  maxConcurrency: number;
  /** Estimated tokens of the request (counted against `tpm`; corrected by `addTokens`). */
  tokens: number;
  /** Unique id of this hold (its concurrency slot is released by `releaseSlot`). */
  lease: string;
  /** A concurrency hold lapses after this unless renewed (`renewSlots`), so a crashed holder leaks nothing for longer. */
  leaseMs: number;
  now: number;
}

/**
 * `index`: the candidate that got the slot, with its most used limit as a fraction after this
 * request (0-1); or `index: -1` when every candidate is at a limit, with the time until one may
 * have room.
 */
export type SlotReply = { index: number; usage: number } | { index: -1; retryAfterMs: number };

export type StoreEvent =
  | { type: 'cooldown'; channelId: number; until: number }
  /** `status: null` means the override was removed (the channel was re-enabled). */
  | { type: 'status'; channelId: number; status: ChannelStatus | null }
  | { type: 'keys'; channelId: number; disabledKeys: number[] }
  | ({ type: 'mark' } & HealthMark);

/**
 * Where pins and health live. Required: the pin methods, `recordFailure`, `setOverride`,
 * `loadHealth`. Optional: `subscribe` (push changes; else polling only), `clearPins`,
 * `countPins`, `shutdown`. Every method may reject; the distributor degrades instead of failing.
 */
export interface Store {
  /** True for an in-process store (state is not shared between processes). */
  readonly localKeys: boolean;
  /** Prefix of every key the store writes. */
  readonly prefix: string;
  /**
   * The value pinned under `key`, refreshing its TTL when `refreshTtlMs` is given; null when absent.
   * Keys and values are opaque to a store: the distributor builds them (a value never contains
   * `:` and is at most 64 characters).
   */
  getPin(key: string, refreshTtlMs?: number): Promise<string | null>;
  /**
   * `getPin()` answered without a promise, for an in-process store; `undefined` when it cannot
   * answer synchronously (the distributor then calls `getPin`). Optional.
   */
  getPinSync?(key: string, refreshTtlMs?: number): string | null | undefined;
  /** Pins `key` to `value` for `ttlMs`. */
  setPin(key: string, value: string, ttlMs: number): Promise<void>;
  /**
   * Add-if-absent: writes `value` for `ttlMs` when `key` holds nothing (or exactly `replacing`, a
   * stale value being replaced) and resolves to null; otherwise resolves to the value it holds,
   * unchanged. Atomic across every user of the store (Redis: one script). Optional: without it
   * concurrent first requests of a session are not coalesced.
   */
  reservePin?(key: string, value: string, ttlMs: number, replacing?: string): Promise<string | null>;
  /** `reservePin()` answered without a promise, for an in-process store; `undefined`: ask `reservePin`. Optional. */
  reservePinSync?(key: string, value: string, ttlMs: number, replacing?: string): string | null | undefined;
  /** Compare-and-delete: removes the pin only if it still holds `expectedValue`. */
  clearPin(key: string, expectedValue: string): Promise<boolean>;
  /** Counts a failure of a channel; resolves to the cooldown end when this failure starts one. */
  recordFailure(channelId: number, policy: CooldownPolicy, now: number): Promise<number | null>;
  /** Records (or with `null`/`[]` removes) a status or disabled-keys override, and tells other instances. */
  setOverride(channelId: number, patch: { status?: ChannelStatus | null; disabledKeys?: number[] }): Promise<void>;
  /** Forgets a channel's counted failures after a success (optional; without it failures only age out). */
  recordSuccess?(channelId: number): Promise<void>;
  /** Ends a channel's cooldown now. */
  clearCooldown?(channelId: number): Promise<void>;
  /** Every current cooldown and override. */
  loadHealth(): Promise<HealthSnapshot>;
  /** Pushes changes made by any instance; returns the unsubscribe function. */
  subscribe?(listener: (event: StoreEvent) => void): () => void;
  /** Deletes the pins whose key starts with `keyPrefix` (every pin when it is omitted). Returns how many. */
  clearPins?(keyPrefix?: string): Promise<number>;
  /** Live pins, counted by `groupOf(key)`. */
  countPins?(groupOf: (key: string) => string): Promise<Record<string, number>>;
  /** Records a timed mark (an ejection, a cooling key) and tells other instances. Optional: without it marks stay local. */
  setMark?(mark: HealthMark): Promise<void>;
  /**
   * Takes a slot under a channel's limits, trying its candidate keys in order; atomic across every
   * user of the store. Optional: without it `limits` are counted by this instance only.
   */
  acquireSlot?(req: SlotRequest): Promise<SlotReply>;
  /** `acquireSlot()` without a promise, for an in-process store; `undefined`: ask `acquireSlot`. */
  acquireSlotSync?(req: SlotRequest): SlotReply | undefined;
  /** Releases a hold's concurrency slot (its rpm/tpm counts stay for their window). */
  releaseSlot?(key: string, lease: string): Promise<void>;
  /** `releaseSlot()` without a promise, for an in-process store. Optional. */
  releaseSlotSync?(key: string, lease: string): void;
  /** Extends live concurrency holds to `until` (epoch ms). */
  renewSlots?(holds: ReadonlyArray<{ key: string; lease: string }>, until: number): Promise<void>;
  /** Adds `tokens` (may be negative: an estimate corrected by the reported usage) to the tpm count of a hold taken at `at`. */
  addTokens?(key: string, at: number, tokens: number): Promise<void>;
  /** Stops timers and subscriptions the store started; never closes a client the user passed in. */
  shutdown?(): Promise<void> | void;
}
