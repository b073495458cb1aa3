// Per channel and model latency, as `selection.strategy: 'lowest-latency'` reads it: an
// exponentially weighted average of what relays report (time to first byte for streams, total
// time otherwise). Per instance; bounded by the registry's (channel, model) pairs, since only the
// channel that served a request's model reports.

export interface LatencyStat {
  /** The weighted average, ms. */
  avg: number;
  /** Samples seen (capped; only compared with `minSamples`). */
  n: number;
}

export class LatencyBook {
  /** model -> channel id -> stat (one string lookup per pick, then id lookups). */
  private byModel = new Map<string, Map<number, LatencyStat>>();
  private readonly alpha: number;

  /** `halfLife`: after this many samples an old sample weighs half. */
  constructor(halfLife: number) {
    this.alpha = 1 - Math.pow(0.5, 1 / halfLife);
  }

  /** One sample: time to first byte for a stream, total time otherwise (both feed the one average, API.md 11.4). */
  record(channelId: number, model: string, ms: number): void {
    // Only finite non-negative numbers: a string that passes a `>= 0` check ('5') would make the
    // average text, then NaN after the next sample, and lowest-latency would pick nothing (503).
    if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) return;
    let m = this.byModel.get(model);
    if (!m) this.byModel.set(model, (m = new Map()));
    const s = m.get(channelId);
    if (!s) {
      m.set(channelId, { avg: ms, n: 1 });
      return;
    }
    if (s.n < 1_000_000) s.n++;
    // the plain mean of the first samples, then the exponential average: started from its first
    // sample alone (often its slowest: a cold connection), a channel's average would stay near
    // that sample for ~1/alpha samples and keep an equally fast channel out of the buffer
    s.avg += Math.max(this.alpha, 1 / s.n) * (ms - s.avg);
  }

  /** The stats of one model (undefined: no channel reported for it yet). */
  ofModel(model: string): ReadonlyMap<number, LatencyStat> | undefined {
    return this.byModel.get(model);
  }

  /** One channel's stat for a model. */
  stat(channelId: number, model: string): LatencyStat | undefined {
    return this.byModel.get(model)?.get(channelId);
  }

  /** Forgets a channel (removed from the registry). */
  forget(channelId: number): void {
    for (const m of this.byModel.values()) m.delete(channelId);
  }
}
