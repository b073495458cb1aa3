// The retry decision: may the relay try another channel after this upstream failure? Pure
// functions over what the request knows; RequestRun records, picks and waits around them.
import type { Config } from '../options';
import type { StopReason } from '../types';

export interface RetryFacts {
  /** The request named its channel (an admin pin): no retry. */
  specific: boolean;
  /** The status is in `retry.statusCodes` (or there was none: a connection failure). */
  retryable: boolean;
  /** The pin was used and its rule has `skipRetryOnFailure`. */
  skipRule: boolean;
  /** Upstream retries already made in this request. */
  retriesMade: number;
}

/** Why no retry is allowed, or undefined when one is (before the budget and the pick). */
export function retryRefusal(f: RetryFacts, cfg: Config): StopReason | undefined {
  if (f.specific) return 'specific_channel';
  if (!f.retryable) return 'status';
  if (f.skipRule) return 'skip_rule';
  if (f.retriesMade >= cfg.retry.times) return 'times';
  return undefined;
}

/**
 * The Envoy-style retry budget: retries in flight may not exceed max(minConcurrent, percent % of
 * the requests in flight). True when one more may start.
 */
export function budgetAllows(cfg: Config, counters: { active: number; retrying: number }): boolean {
  const budget = cfg.retry.budget;
  if (!budget) return true;
  const allowed = Math.max(budget.minConcurrent, Math.floor((budget.percent / 100) * counters.active));
  return counters.retrying < allowed;
}

/**
 * With no other channel left, may the failed one be tried again after its Retry-After? Only when
 * the wait is at most `retry.maxRetryAfterMs` and the channel can still serve the request.
 */
export function mayWaitForRetryAfter(cfg: Config, retryAfterMs: number | undefined, channelStillServes: () => boolean): boolean {
  const max = cfg.retry.maxRetryAfterMs;
  if (!max || retryAfterMs === undefined || !(retryAfterMs >= 0) || retryAfterMs > max) return false;
  return channelStillServes();
}
