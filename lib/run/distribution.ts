// `res.locals.distribution`: the public record of what the distributor decided for a request, and
// the relay's calls (retry, fail, signal). It holds public fields only; the request's internal
// state lives in its RequestRun, which this module reaches through a symbol (`runOf()`), never
// through a field a gateway could read, log or serialise.
import { inspect } from 'node:util';
import { REQUEST_SECRETS } from '../security/redact';
import type { AffinityInfo, Attempt, Channel, Distribution, RetryFailure, StopReason, UsageReport } from '../types';

/** What the record needs from its run (implemented by RequestRun). */
export interface RunHandle {
  retry(failure: RetryFailure): Promise<Channel | null>;
  reportUsage(usage: UsageReport): void;
  reportLatency(ms: number): void;
  fail(failure: RetryFailure): Promise<void>;
  signal(): AbortSignal;
  callerSecrets(): string[];
  hedge(): Promise<Channel | null>;
  settleHedge(winner: 'primary' | 'hedge', loserFailure?: RetryFailure): Promise<void>;
}

/** What relay() needs to hedge a request (`relay({ hedge })`). */
export interface HedgeControl {
  /** Another channel for the request while the current one has not answered; null when not allowed. */
  start(): Promise<Channel | null>;
  /** The race is decided: the winner is (or stays) the current channel; the loser failed (`loserFailure`) or was aborted. */
  settle(winner: 'primary' | 'hedge', loserFailure?: RetryFailure): Promise<void>;
}

/** @internal The hedge calls of a distributor's record (undefined for anything else). */
export function hedgeControl(d: unknown): HedgeControl | undefined {
  if (!(d instanceof DistributionRecord)) return undefined;
  const run = d[RUN];
  return { start: () => run.hedge(), settle: (winner, loserFailure) => run.settleHedge(winner, loserFailure) };
}

const RUN: unique symbol = Symbol('express-channel-distributor.run');

type PublicFields = Omit<Distribution, 'retry' | 'fail' | 'signal' | 'reportUsage' | 'reportLatency'>;

export class DistributionRecord implements Distribution {
  selected = false;
  model: string;
  group: string;
  selectedGroup: string;
  affinity?: AffinityInfo;
  tried: number[] = [];
  attempts: Attempt[] = [];
  stopReason?: StopReason;
  trace: string[] = [];
  /** @internal */
  readonly [RUN]: RunHandle;
  private boundRetry?: (failure?: RetryFailure) => Promise<Channel | null>;
  private boundFail?: (failure?: RetryFailure) => Promise<void>;

  constructor(run: RunHandle, model: string, group: string) {
    this[RUN] = run;
    this.model = model;
    this.group = group;
    this.selectedGroup = group;
  }

  /**
   * The relay's call after an upstream failure (bound, so it may be destructured). Created on
   * first use: most requests never fail, and a closure per request is not free.
   */
  get retry(): (failure?: RetryFailure) => Promise<Channel | null> {
    return (this.boundRetry ??= (failure?: RetryFailure) => this[RUN].retry(failure ?? {}));
  }

  /** Reports a failure that must not be retried (after the commit point). Bound, created on first use. */
  get fail(): (failure?: RetryFailure) => Promise<void> {
    return (this.boundFail ??= (failure?: RetryFailure) => this[RUN].fail(failure ?? {}));
  }

  /** Reports the token usage of the answer that served (relay() does it itself). */
  reportUsage(usage: UsageReport): void {
    this[RUN].reportUsage(usage);
  }

  /** Reports the current channel's latency for this request (relay() does it itself). */
  reportLatency(ms: number, _opts?: { firstByte?: boolean }): void {
    // a first byte (a stream) and a total time (anything else) feed the same average
    this[RUN].reportLatency(ms);
  }

  /** Aborted when the client leaves before the response finished (created on first use). */
  get signal(): AbortSignal {
    return this[RUN].signal();
  }

  /** @internal The caller's values to keep out of any text (for relay()'s redaction). */
  [REQUEST_SECRETS](): string[] {
    return this[RUN].callerSecrets();
  }

  /** The public fields only, for logs and JSON responses. */
  toJSON(): PublicFields {
    const out: PublicFields = {
      selected: this.selected, model: this.model, group: this.group, selectedGroup: this.selectedGroup,
      tried: this.tried, attempts: this.attempts, trace: this.trace,
    };
    if (this.affinity) out.affinity = this.affinity;
    if (this.stopReason) out.stopReason = this.stopReason;
    return out;
  }

  /** `console.log(res.locals.distribution)` shows the public fields only. */
  [inspect.custom](): PublicFields {
    return this.toJSON();
  }
}
