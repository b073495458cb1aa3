// MemoryStore: the embedded default store. Pins live in a Map in write order (a write moves a
// key to the end, so the oldest pin is first): lookups and writes are O(1), a full store evicts its
// oldest pin, expiry is checked on read and swept in slices, and every walk over the pins (sweep,
// countPins, clearPins) yields to the event loop every few ms. TTLs are in ms at the interface.
// Channel health (failure windows, cooldowns) lives in node-cache: a few keys that expire by
// themselves. Pins do not: node-cache refuses writes when full instead of evicting the oldest, and
// its expiry sweep, keys() and del walk every key synchronously (889 ms at 1,000,000 pins).
import { EventEmitter } from 'node:events';
import NodeCache from 'node-cache';
import { performance } from 'node:perf_hooks';
import { integerAtLeast, nonNegativeNumber } from '../check';
import { DistributorError } from '../errors';
import type { ChannelStatus } from '../types';
import { SlotCounter } from './slots';
import type { CooldownPolicy, HealthMark, HealthSnapshot, SlotReply, SlotRequest, Store, StoreEvent } from './store';

export interface MemoryStoreOptions {
  /** Key prefix (kept for symmetry with RedisStore and for validations). Default `'ecd:'`. */
  prefix?: string;
  /**
   * Most pins kept (an integer >= 1). When full, a new pin evicts the oldest written one, so a new
   * session is always pinned and a pin can always move. Default 100,000.
   */
  maxPins?: number;
  /** Seconds between expired-pin sweeps (run in slices); 0 for none (expired pins then go when read). Default 60. */
  checkPeriodSeconds?: number;
}

/** A pin: its value and when it expires (epoch ms; Infinity for a pin without a TTL). */
interface Pin {
  value: string;
  exp: number;
}

/** Longest synchronous run of a walk over the pins before it yields (setImmediate). */
const SLICE_MS = 3;
/** Entries handled between two looks at the clock. */
const CLOCK_EVERY = 256;

/**
 * A flat copy of a key. A key built by concatenation (`prefix + digest`, as the distributor builds
 * pin keys) is a rope over its parts; kept as a Map key it holds the rope, its parts and the
 * flattened text (~180 bytes for a 67-character key instead of ~90: 30 instead of 17 MB of heap at
 * 100,000 pins). A JSON round trip makes one flat string for any text (~0.7 µs, once per write).
 */
const flatKey = (key: string): string => JSON.parse(JSON.stringify(key)) as string;

const yieldToLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * Calls `each` for every item of `items`, yielding to the event loop after every SLICE_MS of work.
 * A Map iterator has no return(), so `break` leaves it where it was and the next slice resumes it;
 * for-of over keys() allocates nothing per entry (entries() would allocate a pair, and GC work).
 */
async function inSlices<T>(items: IterableIterator<T>, each: (item: T) => void): Promise<void> {
  for (;;) {
    const until = performance.now() + SLICE_MS;
    let n = 0;
    let finished = true;
    for (const item of items) {
      each(item);
      if (++n % CLOCK_EVERY === 0 && performance.now() >= until) {
        finished = false;
        break;
      }
    }
    if (finished) return;
    await yieldToLoop();
  }
}

function invalid(message: string): DistributorError {
  return new DistributorError('ERR_DIST_INVALID_STORE', `MemoryStore: ${message}`);
}

/**
 * In-process store. Pins and health are shared by every distributor of this process that uses
 * the same instance, and by nothing else: use `RedisStore` when several instances run.
 */
export class MemoryStore implements Store {
  readonly localKeys = true;
  readonly prefix: string;
  /** Most pins kept; the oldest written is evicted to make room. */
  readonly maxPins: number;
  /** Pins in write order (oldest first). */
  private pins = new Map<string, Pin>();
  /** Walks `pins` from the oldest entry for eviction (a fresh keys() iterator re-skips every deleted slot). */
  private oldest?: Iterator<string>;
  private sweepTimer?: NodeJS.Timeout;
  private sweeping?: Promise<number>;
  /** `f<id>` -> the failure window `{ count, since }`, `c<id>` -> the cooldown end (epoch ms); each expires by itself. */
  private health = new NodeCache({ stdTTL: 0, checkperiod: 60, useClones: false });
  private statuses = new Map<number, ChannelStatus>();
  private keys = new Map<number, number[]>();
  private events = new EventEmitter();
  private marks = new Map<string, HealthMark>();
  private slots = new SlotCounter();

  constructor(options: MemoryStoreOptions = {}) {
    this.prefix = options.prefix ?? 'ecd:';
    this.maxPins = integerAtLeast(invalid, 'maxPins', options.maxPins, 100_000, 1);
    const period = nonNegativeNumber(invalid, 'checkPeriodSeconds', options.checkPeriodSeconds, 60);
    if (period > 0) {
      this.sweepTimer = setInterval(() => void this.sweep(), period * 1000);
      this.sweepTimer.unref();
    }
    this.events.setMaxListeners(0);
  }

  async getPin(key: string, refreshTtlMs?: number): Promise<string | null> {
    return this.readPin(key, refreshTtlMs);
  }

  /**
   * `getPin()` without the promise (the distributor reads this store synchronously). A subclass
   * that overrides `getPin` (to record or wrap it) gets `undefined` here, so the distributor
   * keeps going through its `getPin`.
   */
  getPinSync(key: string, refreshTtlMs?: number): string | null | undefined {
    if (this.getPin !== MemoryStore.prototype.getPin) return undefined;
    return this.readPin(key, refreshTtlMs);
  }

  /**
   * The TTL slides in steps of at most 1 s (a tenth of the TTL when that is shorter), not on
   * every read of a hot session.
   */
  private readPin(key: string, refreshTtlMs?: number): string | null {
    const pin = this.pins.get(key);
    if (pin === undefined) return null;
    const now = Date.now();
    if (pin.exp < now) {
      this.pins.delete(key);
      return null;
    }
    if (refreshTtlMs && refreshTtlMs > 0) {
      if (pin.exp === Infinity || now + refreshTtlMs - pin.exp >= Math.min(1000, refreshTtlMs / 10)) pin.exp = now + refreshTtlMs;
    }
    return pin.value;
  }

  async setPin(key: string, value: string, ttlMs: number): Promise<void> {
    const exp = ttlMs > 0 && Number.isFinite(ttlMs) ? Date.now() + ttlMs : Infinity;
    // delete + set: a written pin moves to the end (the newest); the oldest stays first.
    if (!this.pins.delete(key) && this.pins.size >= this.maxPins) this.evictOldest();
    this.pins.set(flatKey(key), { value, exp });
  }

  async reservePin(key: string, value: string, ttlMs: number, replacing?: string): Promise<string | null> {
    return this.reserve(key, value, ttlMs, replacing);
  }

  /** `reservePin()` without the promise; `undefined` for a subclass that overrides `reservePin`. */
  reservePinSync(key: string, value: string, ttlMs: number, replacing?: string): string | null | undefined {
    if (this.reservePin !== MemoryStore.prototype.reservePin) return undefined;
    return this.reserve(key, value, ttlMs, replacing);
  }

  private reserve(key: string, value: string, ttlMs: number, replacing?: string): string | null {
    const held = this.readPin(key);
    if (held !== null && held !== replacing) return held;
    void this.setPin(key, value, ttlMs);
    return null;
  }

  async clearPin(key: string, expectedValue: string): Promise<boolean> {
    if (this.readPin(key) !== expectedValue) return false;
    return this.pins.delete(key);
  }

  async recordFailure(channelId: number, policy: CooldownPolicy, now: number): Promise<number | null> {
    let f = this.health.get<{ count: number; since: number }>(`f${channelId}`);
    if (!f || now - f.since > policy.windowMs) f = { count: 0, since: now };
    f.count++;
    if (f.count < policy.failures) {
      // kept while its window lasts (node-cache TTLs are seconds; 0 would mean forever)
      this.health.set(`f${channelId}`, f, Math.max(1, Math.ceil(policy.windowMs / 1000)));
      return null;
    }
    this.health.del(`f${channelId}`);
    const until = now + policy.durationMs;
    this.setCooldownEnd(channelId, until);
    this.emit({ type: 'cooldown', channelId, until });
    return until;
  }

  async recordSuccess(channelId: number): Promise<void> {
    this.health.del(`f${channelId}`);
  }

  async clearCooldown(channelId: number): Promise<void> {
    this.health.del([`c${channelId}`, `f${channelId}`]);
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
    for (const k of this.health.keys()) {
      if (k.charCodeAt(0) !== 0x63 /* c */) continue;
      const until = this.health.get<number>(k);
      if (until !== undefined && until > now) cooldowns[Number(k.slice(1))] = until;
    }
    return {
      cooldowns,
      statuses: Object.fromEntries(this.statuses),
      disabledKeys: Object.fromEntries([...this.keys].map(([k, v]) => [k, [...v]])),
      marks: [...this.marks.values()].map((m) => ({ ...m })),
    };
  }

  async setMark(mark: HealthMark): Promise<void> {
    // ejection marks outlive their end (the next ejection's length grows from their count)
    this.marks.set(`${mark.kind}:${mark.channelId}:${mark.keyIndex ?? ''}`, { ...mark });
    this.emit({ type: 'mark', ...mark });
  }

  // ---- limits (this process only; RedisStore shares them) ------------------------------------

  async acquireSlot(req: SlotRequest): Promise<SlotReply> {
    return this.slots.acquire(req);
  }

  acquireSlotSync(req: SlotRequest): SlotReply {
    return this.slots.acquire(req);
  }

  async releaseSlot(key: string, lease: string): Promise<void> {
    this.slots.release(key, lease);
  }

  releaseSlotSync(key: string, lease: string): void {
    this.slots.release(key, lease);
  }

  async renewSlots(holds: ReadonlyArray<{ key: string; lease: string }>, until: number): Promise<void> {
    this.slots.renew(holds, until);
  }

  async addTokens(key: string, at: number, tokens: number): Promise<void> {
    this.slots.addTokens(key, at, tokens);
  }

  /** Live concurrency holds under a limit key (tests, admin). */
  holding(key: string): number {
    return this.slots.holding(key);
  }

  subscribe(listener: (event: StoreEvent) => void): () => void {
    this.events.on('event', listener);
    return () => this.events.off('event', listener);
  }

  /**
   * Deletes the live pins whose key starts with `keyPrefix` (every pin when omitted), in slices;
   * pins written after a slice passed them stay.
   */
  async clearPins(keyPrefix?: string): Promise<number> {
    const now = Date.now();
    let deleted = 0;
    if (!keyPrefix) {
      // Swap in an empty map at once; count what the old one held without blocking.
      const old = this.pins;
      this.pins = new Map();
      this.oldest = undefined;
      await inSlices(old.values(), (pin) => {
        if (pin.exp >= now) deleted++;
      });
      return deleted;
    }
    const pins = this.pins;
    await inSlices(pins.keys(), (k) => {
      if (!k.startsWith(keyPrefix)) return;
      if ((pins.get(k)?.exp ?? 0) >= now) deleted++;
      pins.delete(k);
    });
    return deleted;
  }

  /** Live pins counted by `groupOf(key)`, in slices (expired pins met on the way are removed). */
  async countPins(groupOf: (key: string) => string): Promise<Record<string, number>> {
    const now = Date.now();
    const pins = this.pins;
    const out: Record<string, number> = {};
    await inSlices(pins.keys(), (k) => {
      if ((pins.get(k)?.exp ?? 0) < now) {
        pins.delete(k);
        return;
      }
      const name = groupOf(k);
      out[name] = (out[name] ?? 0) + 1;
    });
    return out;
  }

  /**
   * Removes expired pins, in slices; resolves to how many. The periodic sweep (every
   * `checkPeriodSeconds`) calls it; a call while a sweep runs joins that sweep.
   */
  sweep(): Promise<number> {
    if (this.sweeping) return this.sweeping;
    const now = Date.now();
    const pins = this.pins;
    let removed = 0;
    const run = inSlices(pins.keys(), (k) => {
      if ((pins.get(k)?.exp ?? 0) < now) {
        pins.delete(k);
        removed++;
      }
    }).then(() => removed);
    const done = (this.sweeping = run.finally(() => {
      if (this.sweeping === done) this.sweeping = undefined;
    }));
    return done;
  }

  /** Number of pins held (expired ones count until a sweep or a read removes them). */
  get pinCount(): number {
    return this.pins.size;
  }

  shutdown(): void {
    this.health.close();
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    this.events.removeAllListeners();
  }

  /** A cooldown that ends at `until`; one already over is not kept. */
  private setCooldownEnd(channelId: number, until: number): void {
    const left = until - Date.now();
    if (left > 0) this.health.set(`c${channelId}`, until, Math.ceil(left / 1000));
    else this.health.del(`c${channelId}`);
  }

  /** Makes room for one pin: deletes the oldest written. */
  private evictOldest(): void {
    let next = this.oldest?.next();
    if (!next || next.done) {
      this.oldest = this.pins.keys();
      next = this.oldest.next();
    }
    if (!next.done) this.pins.delete(next.value);
  }

  private emit(e: StoreEvent): void {
    this.events.emit('event', e);
  }
}
