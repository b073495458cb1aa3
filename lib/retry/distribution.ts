// One request's distribution: the tried set, attempts, the current channel, setup with fallback,
// the relay's retry(), and what happens when the response finishes (pins and health).
import type { Request, Response } from 'express';
import type { AffinityMatch } from '../affinity/key';
import { NoEnabledKeyError } from '../channels/multi-key';
import type { RegisteredChannel } from '../channels/registry';
import { DistributorError } from '../errors';
import { callHook } from '../hooks';
import { callerTextOf, countsAsFailure } from '../health/health';
import { callerCredentials, errorText, redact, REQUEST_SECRETS } from '../security/redact';
import { inspect } from 'node:util';
import type { Runtime } from '../runtime';
import { selectChannel } from '../selection/select';
import { driveToPromise, isThenable, type Steps } from '../steps';
import { pinValue } from '../affinity/layout';
import { decidePin } from '../affinity/policy';
import { isRetryable } from './status-ranges';
import { TRACE_HEADER, traceHeaderValue } from '../trace';
import { ChannelStatus, type AffinityInfo, type Attempt, type Channel, type Distribution, type RequestContext, type RetryFailure, type StopReason } from '../types';

/** The frozen view of a channel with key `index` chosen for this request (cached on the channel). */
function viewWithKey(ch: RegisteredChannel, index: number): Channel {
  if (index < 0) return ch.view;
  let kv = ch.keyViews;
  // a status change replaces ch.view, and with it every view derived from it
  if (kv === undefined || kv.base !== ch.view) ch.keyViews = kv = { base: ch.view, views: [] };
  return (kv.views[index] ??= Object.freeze({ ...ch.view, key: ch.keys[index], keyIndex: index }) as Channel);
}

/**
 * The view of a chosen channel that observers get (hook events): `keyIndex` but never `key`.
 * Cached next to the keyed views, so a `select` hook costs no allocation per request.
 */
export function observerView(ch: RegisteredChannel, index: number): Channel {
  if (index < 0) return ch.view;
  viewWithKey(ch, index); // makes sure keyViews belongs to the current view
  const kv = ch.keyViews as NonNullable<RegisteredChannel['keyViews']>;
  kv.observed ??= [];
  return (kv.observed[index] ??= Object.freeze({ ...ch.view, keyIndex: index }) as Channel);
}

function clientGoneReason(): Error {
  const e = new Error('The client closed the connection before the response finished');
  e.name = 'AbortError';
  return e;
}

export class RequestRun implements Distribution {
  selected = false;
  model: string;
  group: string;
  selectedGroup: string;
  affinity?: AffinityInfo;
  tried: number[] = [];
  attempts: Attempt[] = [];
  stopReason?: StopReason;
  trace: string[] = [];

  /** @internal */ match?: AffinityMatch;
  /** @internal more values to keep out of messages (e.g. the affinity value of a request that did no lookup) */
  secrets?: string[];
  /** @internal the channel id the pin pointed to, when there was a pin */
  pinnedId?: number;
  /** @internal the pin's value as read (compare-and-delete clears exactly that) */
  pinnedValue?: string;
  /** @internal the pinned channel failed with a retryable status */
  pinFailed = false;
  /** @internal */ current?: RegisteredChannel;
  private currentKeyIndex?: number;
  private firstChosen?: number;
  private upstreamRetries = 0;
  /** upstream attempts made in the current `selectedGroup` ('descend' restarts at tier 0 in a new group) */
  private groupUpstream = 0;
  private toldFailure = false;
  private finished = false;
  private retrying = false;
  private lastSetupError?: string;
  private wake?: () => void;
  /** the last group selection looked at (named in the 503 of an `auto` request) */
  private lastGroup?: string;
  private inflight?: Promise<Channel | null>;
  private abort?: AbortController;
  /** The client left before the response finished (the signal is aborted when created). */
  private clientGone = false;

  constructor(
    private readonly rt: Runtime,
    private readonly req: Request,
    private readonly res: Response,
    readonly ctx: RequestContext,
    model: string,
    group: string,
    /** @internal concrete groups to walk, in order */
    readonly groups: string[],
    /** @internal */ readonly specific: boolean,
  ) {
    this.model = model;
    this.group = group;
    this.selectedGroup = group;
  }

  /** The public fields only (no internals, no secrets), for logs and JSON responses. */
  toJSON(): Omit<Distribution, 'retry' | 'fail' | 'signal'> {
    const out: Omit<Distribution, 'retry' | 'fail' | 'signal'> = {
      selected: this.selected, model: this.model, group: this.group, selectedGroup: this.selectedGroup,
      tried: this.tried, attempts: this.attempts, trace: this.trace,
    };
    if (this.affinity) out.affinity = this.affinity;
    if (this.stopReason) out.stopReason = this.stopReason;
    return out;
  }

  /**
   * Aborted when the client goes before the response finished. Created on first use: an
   * AbortController per request costs time every request would pay, and most relays ask once.
   */
  get signal(): AbortSignal {
    if (!this.abort) {
      this.abort = new AbortController();
      if (this.clientGone) this.abort.abort(clientGoneReason());
    }
    return this.abort.signal;
  }

  private boundRetry?: (failure?: RetryFailure) => Promise<Channel | null>;
  private boundFail?: (failure?: RetryFailure) => Promise<void>;

  /**
   * The relay's call after an upstream failure (bound, so it may be destructured). Created on
   * first use: most requests never fail, and a closure per request is not free.
   */
  get retry(): (failure?: RetryFailure) => Promise<Channel | null> {
    return (this.boundRetry ??= (failure: RetryFailure = {}) => {
      // Overlapping calls for the same failure share one decision instead of racing each other.
      if (this.inflight) return this.inflight;
      const p = this.doRetry(failure ?? {});
      this.inflight = p;
      const clear = () => {
        if (this.inflight === p) this.inflight = undefined;
      };
      p.then(clear, clear);
      return p;
    });
  }

  // ---- selection and setup ------------------------------------------------------------------

  /** Marks a channel as tried (it is never picked again in this request). */
  markTried(id: number): void {
    // `tried` stays short (attempts are bounded), so a scan beats a Set per request
    if (this.tried.length === 0) this.tried = [id]; // exact size: `push` on [] allocates room for 16
    else if (!this.tried.includes(id)) this.tried.push(id);
  }

  /** @internal appends a step to `trace` (a new array holds exactly its first step). */
  note(step: string): void {
    if (this.trace.length === 0) this.trace = [step];
    else this.trace.push(step);
  }

  isTried(id: number): boolean {
    return this.tried.includes(id);
  }

  /** Picks the next eligible, untried, not cooling channel over the given groups. */
  pick(groups: readonly string[], startTier = 0): { ch: RegisteredChannel; group: string } | undefined {
    const { registry, health, cfg } = this.rt;
    const now = Date.now();
    const tried = this.tried;
    const eligible = (id: number) => !tried.includes(id) && !health.isCooling(id, now);
    for (const [i, g] of groups.entries()) {
      // `startTier` applies to the first (current) group; a group moved on to starts at its top tier
      this.lastGroup = g;
      const ch = selectChannel(registry.tiers(g, this.model), eligible, cfg.random, cfg.retry.tierStrategy, i === 0 ? startTier : 0);
      if (ch !== undefined) return { ch, group: g };
    }
    return undefined;
  }

  /**
   * Sets a channel up (key choice, then `options.setup`). On success it becomes the current
   * channel and `res.locals.channel`; on failure the attempt is recorded and false returned.
   * Synchronous unless `setup` returns a promise (then the answer is a promise too).
   */
  trySetup(ch: RegisteredChannel, group: string): boolean | Promise<boolean> {
    this.markTried(ch.id);
    let view: Channel;
    let keyIndex: number | undefined;
    let done: unknown;
    try {
      const index = this.rt.keys.pick(ch);
      keyIndex = index < 0 ? undefined : index;
      view = viewWithKey(ch, index);
      done = this.rt.cfg.setup?.(view, this.req, this.res);
    } catch (e) {
      return this.setupFailed(ch, e);
    }
    if (isThenable(done)) {
      return Promise.resolve(done).then(() => this.setupDone(ch, group, view, keyIndex), (e: unknown) => this.setupFailed(ch, e));
    }
    return this.setupDone(ch, group, view, keyIndex);
  }

  private setupDone(ch: RegisteredChannel, group: string, view: Channel, keyIndex: number | undefined): true {
    this.current = ch;
    this.currentKeyIndex = keyIndex;
    this.firstChosen ??= ch.id;
    if (group !== this.selectedGroup) this.groupUpstream = 0;
    this.selectedGroup = group;
    this.selected = true;
    this.toldFailure = false;
    this.res.locals.channel = view;
    return true;
  }

  private setupFailed(ch: RegisteredChannel, e: unknown): false {
    const reason = this.redact(e instanceof NoEnabledKeyError ? e.message : errorText(e, 'setup failed'), ch);
    this.lastSetupError = reason;
    this.attempts.push({ channelId: ch.id, phase: 'setup', reason });
    this.note(`setup_failed ch=${ch.id}`);
    callHook(this.rt.cfg, 'fallback', { req: this.req, channelId: ch.id, error: reason });
    this.rt.cfg.logger.warn('channel setup failed, falling back', { channelId: ch.id, error: reason });
    return false;
  }

  /**
   * Normal selection with setup fallback: up to `attempts` channels, never one twice; a
   * duplicate pick costs nothing because tried channels are excluded from the pick itself.
   */
  *selectWithFallback(attempts: number, reason: 'select' | 'fallback' | 'retry', groups: readonly string[], startTier = 0): Steps<boolean> {
    for (let n = 0; n < attempts; n++) {
      const next = this.pick(groups, startTier);
      if (!next) return false;
      const setUp = this.trySetup(next.ch, next.group);
      if (isThenable(setUp) ? yield setUp : setUp) {
        // a first pick that only succeeded after a setup failure (or a stale pin) is a fallback
        const why = reason === 'select' && this.tried.length > 1 ? 'fallback' : reason;
        this.note(`${why} ch=${next.ch.id}`);
        if (this.rt.cfg.on.select) callHook(this.rt.cfg, 'select', { req: this.req, channel: this.observedChannel(), group: next.group, model: this.model, reason: why });
        return true;
      }
    }
    return false;
  }

  /** The 503 for a request that found no channel that sets up. */
  noChannelError(): DistributorError {
    const shown = this.group === 'auto' ? `auto(${this.lastGroup ?? this.groups[this.groups.length - 1] ?? ''})` : this.group;
    const base = `No available channel for model ${this.model} under group ${shown}`;
    if (this.group === 'auto' && this.groups.length === 0) return new DistributorError('model_not_found', `${base}: auto groups is not enabled`, 503);
    return new DistributorError('model_not_found', this.lastSetupError ? `${base}; last setup error: ${this.lastSetupError}` : base, 503);
  }

  /** Removes channel keys (first), the caller's credentials and the raw affinity value from a message. */
  redact(message: string, ch?: RegisteredChannel): string {
    return redact(message, ch ? ch.keys : [], this[REQUEST_SECRETS]());
  }

  /** @internal The caller's values to keep out of any text (credentials, affinity values). */
  [REQUEST_SECRETS](): string[] {
    const out = callerCredentials(this.req.headers, this.req.originalUrl ?? this.req.url);
    if (this.match) out.push(this.match.rawValue);
    if (this.secrets) out.push(...this.secrets);
    return out;
  }

  /** The channel observers see (hooks): the current one, without its key. */
  observedChannel(): Channel {
    const cur = this.current as RegisteredChannel;
    return observerView(cur, this.currentKeyIndex ?? -1);
  }

  /** `console.log(res.locals.distribution)` shows the public fields only (no channel, no secrets). */
  [inspect.custom](): Omit<Distribution, 'retry' | 'fail' | 'signal'> {
    return this.toJSON();
  }

  // ---- retry --------------------------------------------------------------------------------

  private stop(reason: StopReason, status?: number): null {
    this.stopReason = reason;
    this.note(`stop:${reason}`);
    callHook(this.rt.cfg, 'exhausted', { req: this.req, reason, tried: [...this.tried], status });
    if (this.rt.debug) this.rt.cfg.logger.debug?.('retry stopped', { reason, tried: this.tried, status });
    return null;
  }

  /**
   * Records an upstream failure of the current channel: the attempt, health, and whether the pin
   * must go. Returns undefined when this attempt's failure was already recorded.
   */
  private async noteFailure(cur: RegisteredChannel, failure: RetryFailure): Promise<{ status?: number; retryable: boolean } | undefined> {
    if (this.toldFailure) return undefined;
    const status = typeof failure.status === 'number' ? failure.status : undefined;
    const reason = failure.error !== undefined ? this.redact(errorText(failure.error, 'upstream failed'), cur).slice(0, 200) : undefined;
    this.attempts.push({ channelId: cur.id, phase: 'upstream', status, reason });
    this.note(`upstream ${status ?? 'error'} ch=${cur.id}`);
    this.toldFailure = true;
    this.groupUpstream++;
    const retryable = isRetryable(this.rt.cfg.retry.statusTable, status);
    if (retryable && this.affinity?.used && cur.id === this.pinnedId) this.pinFailed = true;
    await this.rt.health.recordFailure(cur, this.currentKeyIndex, { ...failure, status }, () => callerTextOf(this.req));
    return { status, retryable };
  }

  /**
   * Reports a failure of the current channel that must not be retried, e.g. a stream cut after
   * the response was committed: the attempt, health and pin clearing are recorded, no channel is
   * picked. Calling it (or `retry()`) again for the same attempt records nothing more. Bound
   * (safe to destructure), created on first use like `retry`.
   */
  get fail(): (failure?: RetryFailure) => Promise<void> {
    return (this.boundFail ??= (failure: RetryFailure = {}) => {
      const cur = this.current;
      if (!cur || this.finished) return Promise.resolve();
      return this.noteFailure(cur, failure ?? {}).then(() => undefined);
    });
  }

  private async doRetry(failure: RetryFailure): Promise<Channel | null> {
    const { cfg, counters } = this.rt;
    const cur = this.current;
    if (!cur || this.finished) return this.stop('no_channel', failure.status);
    const noted = await this.noteFailure(cur, failure);
    // already reported (a second retry() or fail() for the same attempt): same answer, no new record
    if (!noted) return this.stopReason ? null : this.stop('no_channel', failure.status);
    const { status, retryable } = noted;
    if (this.specific) return this.stop('specific_channel', status);
    if (!retryable) return this.stop('status', status);
    if (this.affinity?.used && this.match?.rule.skipRetryOnFailure) return this.stop('skip_rule', status);
    if (this.upstreamRetries >= cfg.retry.times) return this.stop('times', status);
    // The response finished while the failure was being recorded: finalize() already ran, so a
    // budget claimed now would never be released (and no one is left to serve).
    if (this.finished) return this.stop('no_channel', status);
    const claimsBudget = !this.retrying;
    if (claimsBudget) {
      if (cfg.retry.budget) {
        const allowed = Math.max(cfg.retry.budget.minConcurrent, Math.floor((cfg.retry.budget.percent / 100) * counters.active));
        if (counters.retrying >= allowed) return this.stop('budget', status);
      }
      // claimed before any await, so concurrent retries cannot all pass the budget check
      this.retrying = true;
      counters.retrying++;
    }
    const groups = this.retryGroups();
    const startTier = cfg.retry.tierStrategy === 'descend' ? this.groupUpstream : 0;
    const from = cur.id;
    // Setup failures here are bounded by the channel count (each channel is tried once).
    let ok = await driveToPromise(this.selectWithFallback(Number.MAX_SAFE_INTEGER, 'retry', groups, startTier));
    if (!ok && this.canWaitFor(cur, failure.retryAfterMs)) {
      // the wait ends early when the client goes away (finalize wakes it)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, failure.retryAfterMs);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = undefined;
      this.note(`wait ${failure.retryAfterMs}ms ch=${cur.id}`);
      ok = this.current === cur && !this.finished;
      if (ok) this.toldFailure = false;
    }
    if (!ok) {
      if (claimsBudget && !this.finished) {
        this.retrying = false;
        counters.retrying--;
      }
      return this.stop('no_channel', status);
    }
    this.upstreamRetries++;
    const next = this.res.locals.channel as Channel;
    callHook(cfg, 'retry', { req: this.req, from, to: next.id, status, attempt: this.upstreamRetries });
    if (cfg.traceHeader && !this.res.headersSent) this.res.setHeader(TRACE_HEADER, traceHeaderValue(this.trace));
    return next;
  }

  /** The failed channel may be retried after Retry-After when it is the only candidate left. */
  private canWaitFor(cur: RegisteredChannel, retryAfterMs: number | undefined): boolean {
    const max = this.rt.cfg.retry.maxRetryAfterMs;
    if (!max || retryAfterMs === undefined || !(retryAfterMs >= 0) || retryAfterMs > max) return false;
    if (cur.status !== ChannelStatus.Enabled || this.rt.health.isCooling(cur.id)) return false;
    return this.groups.some((g) => this.rt.registry.serves(cur.id, g, this.model));
  }

  private retryGroups(): string[] {
    if (this.group !== 'auto') return this.groups;
    if (!this.ctx.crossGroupRetry) return [this.selectedGroup];
    const i = this.groups.indexOf(this.selectedGroup);
    return i === -1 ? this.groups : this.groups.slice(i);
  }

  // ---- response finished --------------------------------------------------------------------

  /** Called once when the response finishes (or the connection closes first). */
  finalize(finished: boolean): void {
    if (this.finished) return;
    this.finished = true;
    if (!finished) {
      this.clientGone = true;
      this.abort?.abort(clientGoneReason());
    }
    const { counters, cfg, guard, health } = this.rt;
    counters.active--;
    if (this.retrying) counters.retrying--;
    this.wake?.();
    const cur = this.current;
    // A specific channel has no pin (match is unset) but its failures still feed health.
    if (!cur) return;
    const status = this.res.statusCode;
    const match = this.match;
    // A last attempt reported as failed (retry() gave up, or fail() after the commit point) is a
    // failure even when the wire status, already sent, says 200.
    const success = finished && status < 400 && !this.toldFailure;
    if (success) health.recordSuccess(cur);
    // A response that finished with a failure status, or was cut after its headers with one (a
    // relay marking a broken stream), without a report: the attempt is recorded and a used pin
    // that failed is cleared, but health is not fed. The status may be the gateway's own (a 404
    // route, a 401 of its own user check, a 413 of its body limit), not the channel's. Only with
    // `health.countUnreported` do such 5xx and 429 count (never an auto-disable rule).
    else if ((finished || (this.res.headersSent && status >= 500)) && !this.toldFailure) {
      const retryable = isRetryable(cfg.retry.statusTable, status);
      if (retryable && this.affinity?.used && cur.id === this.pinnedId) this.pinFailed = true;
      this.attempts.push({ channelId: cur.id, phase: 'upstream', status });
      if (cfg.health.countUnreported && countsAsFailure(status)) void health.recordFailure(cur, this.currentKeyIndex, { status });
    }
    if (!match || !this.affinity) return;
    const info = this.affinity;
    const action = decidePin(
      { success, hit: info.hit, used: info.used, cleared: info.cleared, pinFailed: this.pinFailed, servedPinned: cur.id === this.pinnedId },
      cfg.affinity,
    );
    if (action === 'clear') {
      const pinned = this.pinnedValue as string;
      void guard.run('clearPin', () => cfg.store.clearPin(match.key, pinned), false);
      if (!success) info.cleared = true;
    } else if (action !== 'none') {
      const target = action === 'write-served' ? cur.id : this.firstChosen ?? cur.id;
      void guard.run('setPin', () => cfg.store.setPin(match.key, pinValue(target), match.rule.ttlMs), undefined);
    }
  }
}
