// A fake relay (the downstream route) for retry()/health tests: it simulates upstream results per
// channel id, reports failures through res.locals.distribution.retry(), and answers with the
// status of the last attempt plus the distribution's records.
import type { Request, Response } from 'express';
import type { RetryFailure } from '../../lib';

/**
 * One simulated upstream result: a number is a status (< 400 succeeds); an object is always a
 * failure reported to retry() as is (no status = connection error; `{ status: 301 }` = a failed 3xx).
 */
export type Outcome = number | RetryFailure;

export interface UpstreamCall {
  channel: number;
  keyIndex?: number;
  key?: string;
}

/**
 * Simulated upstreams: `plan(id, ...outcomes)` queues results for a channel (consumed in order);
 * an empty queue answers `fallback` (200 unless changed). `calls` lists every upstream call.
 */
export class FakeUpstreams {
  private queues = new Map<number, Outcome[]>();
  private fixed = new Map<number, Outcome>();
  fallback: Outcome = 200;
  calls: UpstreamCall[] = [];

  /** Queue outcomes for one channel (consumed one per call). */
  plan(id: number, ...outcomes: Outcome[]): this {
    const q = this.queues.get(id) ?? [];
    q.push(...outcomes);
    this.queues.set(id, q);
    return this;
  }

  /** Every call to this channel answers `outcome` (after its queue is empty). */
  always(id: number, outcome: Outcome): this {
    this.fixed.set(id, outcome);
    return this;
  }

  next(id: number): { ok: boolean; failure: RetryFailure } {
    const q = this.queues.get(id);
    const o = q && q.length ? q.shift()! : this.fixed.get(id) ?? this.fallback;
    return typeof o === 'number' ? { ok: o < 400, failure: { status: o } } : { ok: false, failure: o };
  }

  reset(): void {
    this.queues.clear();
    this.fixed.clear();
    this.calls = [];
    this.fallback = 200;
  }
}

export interface RelayOptions {
  /** false: never call retry(); answer the first upstream result as is. Default true. */
  callRetry?: boolean;
  /** Called between attempts (after retry() returned a channel), e.g. to hold a request. */
  between?: (req: Request, attempt: number) => Promise<void> | void;
}

/** The relay handler. Its JSON: { channel, tried, attempts, stopReason, ... }. */
export function fakeRelay(up: FakeUpstreams, opts: RelayOptions = {}) {
  return async (req: Request, res: Response): Promise<void> => {
    const d = res.locals.distribution!;
    let ch = res.locals.channel!;
    const upstream: UpstreamCall[] = [];
    const localsMismatch: number[] = [];
    let status = 200;
    for (let attempt = 0; ; attempt++) {
      const call: UpstreamCall = { channel: ch.id, keyIndex: ch.keyIndex, key: ch.key };
      upstream.push(call);
      up.calls.push(call);
      const { ok, failure: o } = up.next(ch.id);
      if (ok) {
        status = o.status!;
        break;
      }
      status = o.status !== undefined && o.status >= 400 && o.status <= 599 ? o.status : 502;
      if (opts.callRetry === false) break;
      const next = await d.retry(o);
      if (!next) break;
      if (res.locals.channel !== next) localsMismatch.push(next.id);
      await opts.between?.(req, attempt);
      ch = next;
    }
    res.status(status).json({
      channel: ch.id,
      keyIndex: ch.keyIndex ?? null,
      localsChannel: res.locals.channel?.id ?? null,
      localsMismatch,
      tried: [...d.tried],
      attempts: d.attempts.map((a) => ({ ...a })),
      stopReason: d.stopReason ?? null,
      affinity: d.affinity ? { ...d.affinity } : null,
      selectedGroup: d.selectedGroup,
      upstream: upstream.map((u) => u.channel),
    });
  };
}

/** Lets 'finish' handlers (pin writes, health) settle before the next request. */
export const settle = () => new Promise<void>((r) => setImmediate(r));
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
