// Limit counting in process (MemoryStore, and the distributor's own fallback for a store without
// `acquireSlot`), with the same rules as RedisStore's ACQUIRE_SLOT script:
//   maxConcurrency: live holds (each lapses at its lease end unless renewed or released)
//   rpm:            requests in the last 60 s, exactly (a log of times, at most `rpm` long)
//   tpm:            tokens in 1 s buckets over the last 60 s (a bucket counts while any of its
//                   second is inside the window, so no 60 s window ever sees more than tpm)
// A request is refused when it would pass a limit, except that a request larger than `tpm` on
// its own is let through when the window holds no tokens at all (else it could never run).
import type { SlotReply, SlotRequest } from './store';

export const LIMIT_WINDOW_MS = 60_000;
/** How soon a refused request may look again when a concurrency slot is what it lacks. */
export const CONCURRENCY_RETRY_MS = 250;

interface Counts {
  /** lease -> hold end (epoch ms) */
  holds: Map<string, number>;
  /** request times, ascending */
  times: number[];
  /** second -> tokens */
  buckets: Map<number, number>;
}

export class SlotCounter {
  private counts = new Map<string, Counts>();

  private of(key: string): Counts {
    let c = this.counts.get(key);
    if (!c) this.counts.set(key, (c = { holds: new Map(), times: [], buckets: new Map() }));
    return c;
  }

  acquire(r: SlotRequest): SlotReply {
    const now = r.now;
    let best = -1;
    for (let i = 0; i < r.keys.length; i++) {
      const c = this.of(r.keys[i]);
      let wait = 0;
      let use = 0;
      if (r.maxConcurrency > 0) {
        for (const [lease, end] of c.holds) if (end <= now) c.holds.delete(lease);
        const n = c.holds.size;
        if (n >= r.maxConcurrency) wait = CONCURRENCY_RETRY_MS;
        use = Math.max(use, (n + 1) / r.maxConcurrency);
      }
      if (r.rpm > 0) {
        const from = now - LIMIT_WINDOW_MS;
        let drop = 0;
        while (drop < c.times.length && c.times[drop] <= from) drop++;
        if (drop) c.times.splice(0, drop);
        const n = c.times.length;
        if (n >= r.rpm) wait = Math.max(wait, c.times[0] + LIMIT_WINDOW_MS - now);
        use = Math.max(use, (n + 1) / r.rpm);
      }
      if (r.tpm > 0) {
        let sum = 0;
        let oldest = Infinity;
        for (const [sec, tokens] of c.buckets) {
          if ((sec + 1) * 1000 + LIMIT_WINDOW_MS <= now) c.buckets.delete(sec);
          else {
            sum += tokens;
            if (sec < oldest) oldest = sec;
          }
        }
        if (sum > 0 && sum + r.tokens > r.tpm) wait = Math.max(wait, (oldest + 1) * 1000 + LIMIT_WINDOW_MS - now);
        use = Math.max(use, (sum + r.tokens) / r.tpm);
      }
      if (wait === 0) {
        if (r.maxConcurrency > 0) c.holds.set(r.lease, now + r.leaseMs);
        if (r.rpm > 0) c.times.push(now);
        if (r.tpm > 0) {
          const sec = Math.floor(now / 1000);
          c.buckets.set(sec, (c.buckets.get(sec) ?? 0) + r.tokens);
        }
        return { index: i, usage: Math.min(1, use) };
      }
      if (best < 0 || wait < best) best = wait;
    }
    return { index: -1, retryAfterMs: Math.max(1, Math.ceil(best)) };
  }

  release(key: string, lease: string): void {
    this.counts.get(key)?.holds.delete(lease);
  }

  renew(holds: ReadonlyArray<{ key: string; lease: string }>, until: number): void {
    for (const h of holds) {
      const c = this.counts.get(h.key);
      if (c?.holds.has(h.lease)) c.holds.set(h.lease, until);
    }
  }

  addTokens(key: string, at: number, tokens: number, now = Date.now()): void {
    const sec = Math.floor(at / 1000);
    if ((sec + 1) * 1000 + LIMIT_WINDOW_MS <= now) return; // its bucket left the window
    const c = this.counts.get(key);
    if (!c) return;
    c.buckets.set(sec, (c.buckets.get(sec) ?? 0) + tokens);
  }

  /** Live concurrency holds of a key (tests and admin). */
  holding(key: string, now = Date.now()): number {
    const c = this.counts.get(key);
    if (!c) return 0;
    let n = 0;
    for (const end of c.holds.values()) if (end > now) n++;
    return n;
  }
}
