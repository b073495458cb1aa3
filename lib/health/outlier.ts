// Outlier ejection (health.outlier, API.md 11.4): per channel, upstream attempts and counted
// failures over a sliding window (10 buckets, so memory is fixed whatever the traffic), and the
// decision to eject: the failure rate reached with enough attempts, and the group's ejection cap
// not reached. The HealthBook applies, shares and reports ejections.

const BUCKETS = 10;

interface Window {
  /** Start (epoch ms) of the newest bucket. */
  head: number;
  /** Index of the newest bucket. */
  at: number;
  attempts: Uint32Array;
  failures: Uint32Array;
}

export interface OutlierPolicy {
  failureRate: number;
  minRequests: number;
  windowMs: number;
  baseEjectionMs: number;
  maxEjectionMs: number;
  maxEjectionPercent: number;
}

export class OutlierCounter {
  private windows = new Map<number, Window>();
  private readonly bucketMs: number;

  constructor(private readonly policy: OutlierPolicy) {
    this.bucketMs = Math.max(1, policy.windowMs / BUCKETS);
  }

  /**
   * Counts one upstream attempt of a channel (`failed`: it counted as the upstream's failure).
   * True when the channel is now an outlier (the rate reached over at least `minRequests`).
   */
  observe(id: number, failed: boolean, now: number): boolean {
    let w = this.windows.get(id);
    if (!w) this.windows.set(id, (w = { head: now, at: 0, attempts: new Uint32Array(BUCKETS), failures: new Uint32Array(BUCKETS) }));
    this.advance(w, now);
    w.attempts[w.at]++;
    if (failed) w.failures[w.at]++;
    if (!failed) return false;
    let attempts = 0;
    let failures = 0;
    for (let i = 0; i < BUCKETS; i++) {
      attempts += w.attempts[i];
      failures += w.failures[i];
    }
    return attempts >= this.policy.minRequests && failures / attempts >= this.policy.failureRate;
  }

  /** Starts a channel's count afresh (after an ejection: it returns with a clean record). */
  reset(id: number): void {
    this.windows.delete(id);
  }

  /** How long the `count`-th ejection in a row lasts. */
  ejectionMs(count: number): number {
    return Math.min(this.policy.baseEjectionMs * Math.max(1, count), this.policy.maxEjectionMs);
  }

  /** May one more of `total` channels be ejected while `ejected` already are? */
  allows(ejected: number, total: number): boolean {
    return ejected + 1 <= Math.floor((total * this.policy.maxEjectionPercent) / 100);
  }

  private advance(w: Window, now: number): void {
    const steps = Math.floor((now - w.head) / this.bucketMs);
    if (steps <= 0) return;
    const n = Math.min(steps, BUCKETS);
    for (let i = 1; i <= n; i++) {
      const b = (w.at + i) % BUCKETS;
      w.attempts[b] = 0;
      w.failures[b] = 0;
    }
    w.at = (w.at + n) % BUCKETS;
    w.head += steps * this.bucketMs;
  }
}
