// Channel limits (ChannelInput.limits, API.md 11.4) as the distributor uses them: slots taken
// through the store (shared on Redis) or, for a store without `acquireSlot`, counted here; the
// holds this instance owns (released when a response ends, renewed while it lasts, all released
// by shutdown); and what selection knows without I/O: which channels were found full and until
// when, and the last known use of each channel's limits (`least-usage`). Also the in-flight
// count per channel (`least-busy`, `handler.health()`).
//
// Limit keys are `lim:{<channel id>}:<key index | c>`: the hash tag keeps one channel's keys in one
// Redis Cluster slot, so one script tries every key of a channel in one round trip.
import type { RegisteredChannel } from '../channels/registry';
import type { Config } from '../options';
import type { StoreGuard } from '../store-guard';
import { SlotCounter, LIMIT_WINDOW_MS } from '../stores/slots';
import type { SlotReply, SlotRequest } from '../stores/store';
import { OverflowQueue } from './overflow';
import { uniqueToken } from '../unique-token';

/** A concurrency hold lapses after this unless renewed (a crashed instance leaks a slot for at most this). */
export const LEASE_MS = 120_000;

/** One request's hold on a key's limits. */
export interface Hold {
  readonly channelId: number;
  readonly keyIndex: number;
  readonly key: string;
  readonly lease: string;
  /** When it was taken (its tpm bucket). */
  readonly at: number;
  /** Tokens counted against tpm so far (the estimate, then the reported usage). */
  tokens: number;
  /** Its concurrency slot was given back. */
  released: boolean;
}

export function limitKey(channelId: number, keyIndex: number): string {
  return `lim:{${channelId}}:${keyIndex < 0 ? 'c' : keyIndex}`;
}

export class LimitBook {
  /** Counts for a store that cannot (no `acquireSlot`): this instance only. */
  private readonly local?: SlotCounter;
  private full = new Map<number, number>();
  private used = new Map<number, { fraction: number; at: number }>();
  private holds = new Map<string, Hold>();
  private inflight = new Map<number, number>();
  private timer?: NodeJS.Timeout;
  /** Requests waiting for a slot (selection.overflow). */
  readonly queue = new OverflowQueue();

  constructor(private readonly cfg: Config, private readonly guard: StoreGuard) {
    if (typeof cfg.store.acquireSlot !== 'function') this.local = new SlotCounter();
  }

  /** Was every key of the channel found at a limit, and is that still expected now? */
  isFull(id: number, now: number): boolean {
    if (this.full.size === 0) return false;
    const until = this.full.get(id);
    if (until === undefined) return false;
    if (until > now) return true;
    this.full.delete(id);
    return false;
  }

  /** How long until the first channel found full may have room (ms; 1000 when none is known). */
  soonestRoomMs(now: number): number {
    let best = Infinity;
    for (const until of this.full.values()) if (until > now && until - now < best) best = until - now;
    return Number.isFinite(best) ? best : 1000;
  }

  /** The last known use of a channel's limits, fading over the window (a count a minute old has left it). */
  usage(id: number, now: number): number {
    const u = this.used.get(id);
    if (u === undefined) return 0;
    const age = now - u.at;
    return age >= LIMIT_WINDOW_MS ? 0 : u.fraction * (1 - age / LIMIT_WINDOW_MS);
  }

  inFlight(id: number): number {
    return this.inflight.get(id) ?? 0;
  }

  enter(id: number): void {
    this.inflight.set(id, (this.inflight.get(id) ?? 0) + 1);
  }

  leave(id: number): void {
    // kept at 0 rather than deleted: no map churn per request (bounded by the channel ids seen)
    const n = (this.inflight.get(id) ?? 0) - 1;
    this.inflight.set(id, n > 0 ? n : 0);
  }

  /**
   * Asks for a slot on one of `candidates` (key indexes of `ch`, in order; `[-1]` for a channel
   * without keys). Resolves (synchronously with an in-process store) to the hold taken, `null`
   * when every candidate is at a limit (the channel is then known full for the reply's wait), or
   * `undefined` when the store failed (the request goes on without a hold: an outage degrades
   * limits, never requests).
   */
  acquire(ch: RegisteredChannel, candidates: readonly number[], tokens: number): Hold | null | undefined | Promise<Hold | null | undefined> {
    const limits = ch.limits ?? {};
    const now = Date.now();
    const req: SlotRequest = {
      keys: candidates.map((k) => limitKey(ch.id, k)),
      rpm: limits.rpm ?? 0,
      tpm: limits.tpm ?? 0,
      maxConcurrency: limits.maxConcurrency ?? 0,
      tokens: limits.tpm ? tokens : 0,
      lease: uniqueToken(),
      leaseMs: LEASE_MS,
      now,
    };
    const done = (reply: SlotReply | undefined): Hold | null | undefined => this.took(ch, candidates, req, reply);
    if (this.local) return done(this.local.acquire(req));
    const store = this.cfg.store;
    const reply = this.guard.acquireSlot(store, req);
    return reply instanceof Promise ? reply.then(done) : done(reply);
  }

  private took(ch: RegisteredChannel, candidates: readonly number[], req: SlotRequest, reply: SlotReply | undefined): Hold | null | undefined {
    if (reply === undefined || reply === null || typeof reply !== 'object') return undefined;
    if (!('usage' in reply) || !(reply.index >= 0 && reply.index < candidates.length)) {
      const ms = 'retryAfterMs' in reply ? reply.retryAfterMs : NaN;
      // a custom store's odd answer waits a second rather than never or for ever
      const wait = ms > 0 && ms <= LIMIT_WINDOW_MS ? ms : 1000;
      this.full.set(ch.id, Date.now() + wait);
      this.used.set(ch.id, { fraction: 1, at: Date.now() });
      return null;
    }
    this.full.delete(ch.id);
    this.used.set(ch.id, { fraction: reply.usage >= 0 && reply.usage <= 1 ? reply.usage : 1, at: req.now });
    const hold: Hold = {
      channelId: ch.id, keyIndex: candidates[reply.index], key: req.keys[reply.index], lease: req.lease, at: req.now, tokens: req.tokens, released: false,
    };
    if (req.maxConcurrency > 0) {
      this.holds.set(hold.lease, hold);
      this.startRenewing();
    } else hold.released = true; // nothing to give back: rpm/tpm counts stay for their window
    return hold;
  }

  /**
   * Gives a hold's concurrency slot back (once), and lets the head of the queue look again.
   * Resolves when the store has it (never rejects; the request path does not wait for it).
   */
  release(hold: Hold): Promise<void> | undefined {
    if (hold.released) return undefined;
    hold.released = true;
    this.holds.delete(hold.lease);
    let sent: Promise<void> | undefined;
    const store = this.cfg.store;
    if (this.local) this.local.release(hold.key, hold.lease);
    else if (store.releaseSlotSync) {
      try {
        store.releaseSlotSync(hold.key, hold.lease);
      } catch (e) {
        this.guard.report('releaseSlot', e);
      }
    } else sent = this.guard.run('releaseSlot', async () => store.releaseSlot?.(hold.key, hold.lease), undefined);
    this.full.delete(hold.channelId);
    this.queue.notify();
    return sent;
  }

  /** Replaces a hold's token estimate with the reported count. */
  correctTokens(hold: Hold, tokens: number): void {
    const delta = Math.round(tokens - hold.tokens);
    if (delta === 0) return;
    hold.tokens = tokens;
    if (this.local) this.local.addTokens(hold.key, hold.at, delta);
    else {
      const store = this.cfg.store;
      void this.guard.run('addTokens', async () => store.addTokens?.(hold.key, hold.at, delta), undefined);
    }
  }

  private startRenewing(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.renew(), LEASE_MS / 4);
    this.timer.unref();
  }

  private renew(): void {
    if (this.holds.size === 0) {
      clearInterval(this.timer);
      this.timer = undefined;
      return;
    }
    const holds = [...this.holds.values()].map((h) => ({ key: h.key, lease: h.lease }));
    if (this.local) {
      this.local.renew(holds, Date.now() + LEASE_MS);
      return;
    }
    const store = this.cfg.store;
    void this.guard.run('renewSlots', async () => store.renewSlots?.(holds, Date.now() + LEASE_MS), undefined);
  }

  /**
   * Releases every hold this instance has (handler.shutdown()) and wakes every waiter; resolves
   * when the store has the releases, so a client closed right after leaks no slot.
   */
  async shutdown(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const sent = [...this.holds.values()].map((h) => this.release(h));
    this.queue.close();
    await Promise.all(sent);
  }

  /** Holds this instance has now (tests, admin). */
  get held(): number {
    return this.holds.size;
  }
}
