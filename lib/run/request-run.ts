// One request's state and lifecycle: the channel it holds, what it tried, its attempts and trace,
// its signal, and the two moments that end an attempt or the request (an upstream failure, the
// response finishing). Every decision is asked of the module named after it:
//   which channel next     -> selection/next.ts (and selection/fallback.ts for the setup loop)
//   may it retry           -> retry/decide.ts
//   what counts against it -> health/attribution.ts
//   what becomes of the pin-> affinity/policy.ts
//   what is redacted       -> security/redact.ts
import type { Request, Response } from 'express';
import type { AffinityMatch } from '../affinity/key';
import { pinValue } from '../affinity/layout';
import { decidePin } from '../affinity/policy';
import { cleanUsage, type AffinityLabel } from '../affinity/usage';
import { NoEnabledKeyError } from '../channels/multi-key';
import type { RegisteredChannel } from '../channels/registry';
import { observerView, viewWithKey } from '../channels/views';
import { DistributorError } from '../errors';
import { callerTextOf, countsUnreported } from '../health/attribution';
import { callHook } from '../hooks';
import { budgetAllows, mayWaitForRetryAfter, retryRefusal } from '../retry/decide';
import { isRetryable } from '../retry/status-ranges';
import type { Runtime } from '../runtime';
import { callerCredentials, errorText, redact } from '../security/redact';
import { selectWithFallback } from '../selection/fallback';
import type { Hold } from '../selection/limits';
import { retryGroups, retryStartTier } from '../selection/next';
import { driveToPromise, type Steps } from '../steps';
import { TRACE_HEADER, traceHeaderValue } from '../trace';
import { ChannelStatus, type Channel, type RequestContext, type RetryFailure, type StopReason, type UsageReport } from '../types';
import { DistributionRecord, type RunHandle } from './distribution';

/** One side of a hedge race: a channel with its key, slot, in-flight count and view. */
interface Racer {
  ch: RegisteredChannel;
  key: number | undefined;
  hold: Hold | undefined;
  entered: number | undefined;
  view: Channel;
  group: string;
}

function clientGoneReason(): Error {
  const e = new Error('The client closed the connection before the response finished');
  e.name = 'AbortError';
  return e;
}

export class RequestRun implements RunHandle {
  /** `res.locals.distribution`: the public record this run keeps up to date. */
  readonly d: DistributionRecord;
  /** The deciding affinity rule and key, when a rule matched. */
  match?: AffinityMatch;
  /** More values to keep out of messages (the affinity value of a request that did no lookup). */
  secrets?: string[];
  /** The channel id the pin pointed to, when there was a pin. */
  pinnedId?: number;
  /** The pin's value as read (compare-and-delete clears exactly that). */
  pinnedValue?: string;
  /** The key index the pin recorded (key-level pins). */
  pinnedKey?: number;
  /** The pin read was another request's reservation, not yet confirmed by a success. */
  provisional = false;
  /** The reservation this request wrote (it deletes it if it fails). */
  reservedValue?: string;
  /** A reservation written beside a slot request, awaiting reserveSession (affinity/lookup.ts). */
  reservation?: { channelId: number; own: string; replacing?: string; held: string | null | undefined };
  /** Starts that reservation (set by the pipeline when a miss may reserve; see startReservation). */
  reserveBeside?: (ch: RegisteredChannel, keyIndex: number | undefined) => { channelId: number; own: string; replacing?: string; held: unknown } | undefined;
  /** A store call of this request failed: no more before `next()` (an outage costs one timeout). */
  storeFailed = false;
  /** The channel of a stale pin whose clearing (and report) waits for the reservation. */
  stalePin?: number;
  private usageReported = false;
  private latencyReported = false;
  /** The pinned channel failed with a retryable status. */
  pinFailed = false;
  /** The last trySetup found every key of its channel at a limit. */
  limitRefused = false;
  /** Selection passed over a channel at its limits (the overflow queue applies). */
  sawFull = false;
  /** The hold on the current channel's limits (released when the response ends or the channel changes). */
  private hold?: Hold;
  /** The channel counted as in flight for this request. */
  private entered?: number;
  /**
   * A hedge (relay({ hedge })): while it is set up, the current channel's slot and in-flight count
   * (`primary`); while it races the current channel, its own side (`hedge`). One field, created
   * for hedged requests only.
   */
  private race?: { primary?: Racer; hedge?: Racer };
  /** The channel the request holds now. */
  current?: RegisteredChannel;
  /** The last group selection looked at (named in the 503 of an `auto` request). */
  lastGroup?: string;
  /** The key index of the current channel (undefined: a channel without keys). */
  currentKeyIndex?: number;
  private firstChosen?: number;
  private firstKeyIndex?: number;
  private upstreamRetries = 0;
  /** Upstream attempts made in the current `selectedGroup` ('descend' restarts at tier 0 in a new group). */
  private groupUpstream = 0;
  private toldFailure = false;
  private finished = false;
  private retrying = false;
  private lastSetupError?: string;
  private wake?: () => void;
  private inflight?: Promise<Channel | null>;
  private abort?: AbortController;
  /** The client left before the response finished (the signal is aborted when created). */
  private clientGone = false;

  constructor(
    readonly rt: Runtime,
    readonly req: Request,
    readonly res: Response,
    readonly ctx: RequestContext,
    model: string,
    group: string,
    /** Concrete groups to walk, in order. */
    readonly groups: string[],
    /** The request named its channel (an admin pin). */
    readonly specific: boolean,
  ) {
    this.d = new DistributionRecord(this, model, group);
  }

  get model(): string {
    return this.d.model;
  }

  get group(): string {
    return this.d.group;
  }

  /** Aborted when the client goes before the response finished; created on first use. */
  signal(): AbortSignal {
    if (!this.abort) {
      this.abort = new AbortController();
      if (this.clientGone) this.abort.abort(clientGoneReason());
    }
    return this.abort.signal;
  }

  // ---- records ------------------------------------------------------------------------------

  /** Marks a channel as tried (it is never picked again in this request). */
  markTried(id: number): void {
    const d = this.d;
    // `tried` stays short (attempts are bounded), so a scan beats a Set per request
    if (d.tried.length === 0) d.tried = [id]; // exact size: `push` on [] allocates room for 16
    else if (!d.tried.includes(id)) d.tried.push(id);
  }

  /** Appends a step to `trace` (a new array holds exactly its first step). */
  note(step: string): void {
    const d = this.d;
    if (d.trace.length === 0) d.trace = [step];
    else d.trace.push(step);
  }

  /** The channel observers see (hooks): the current one, without its key. */
  observedChannel(): Channel {
    return observerView(this.current as RegisteredChannel, this.currentKeyIndex ?? -1);
  }

  /** The caller's values to keep out of any text: credentials (headers, `?key=`) and affinity values. */
  callerSecrets(): string[] {
    const out = callerCredentials(this.req.headers, this.req.originalUrl ?? this.req.url);
    if (this.match) out.push(this.match.rawValue);
    if (this.secrets) out.push(...this.secrets);
    return out;
  }

  /** A message without channel keys, the caller's credentials or its affinity value. */
  redact(message: string, ch?: RegisteredChannel): string {
    return redact(message, ch ? ch.keys : [], this.callerSecrets());
  }

  // ---- setup --------------------------------------------------------------------------------

  /**
   * Sets a channel up (key choice, then `options.setup`, which may return a promise: the driver
   * waits for it). On success it becomes the current channel and `res.locals.channel`; on
   * failure the attempt is recorded and false returned. `preferredKey`: the key a pin recorded,
   * used while it is enabled.
   */
  *trySetup(ch: RegisteredChannel, group: string, preferredKey?: number): Steps<boolean> {
    this.markTried(ch.id);
    this.limitRefused = false;
    let view: Channel;
    let keyIndex: number | undefined;
    let hold: Hold | null | undefined;
    try {
      const { keys, health, limits } = this.rt;
      const skip = health.keySkip(ch.id);
      let index = keys.pick(ch, preferredKey, skip);
      if (ch.limits !== undefined) {
        // one store call tries every usable key of the channel, the picked one first; a new
        // session's reservation goes out beside it (both answers in one round trip)
        const slot = limits.acquire(ch, keys.candidates(ch, index, skip), this.tokenEstimate());
        const early = this.reserveBeside?.(ch, index < 0 ? undefined : index);
        hold = (yield slot) as Hold | null | undefined;
        if (early !== undefined) {
          const held = (yield early.held) as string | null | undefined;
          this.reservation = { channelId: early.channelId, own: early.own, replacing: early.replacing, held };
          // written for a channel that is full: it is this request's to replace or release
          if (held === null && hold === null) {
            this.reservedValue = early.own;
            this.reservation = undefined;
          }
        }
        if (hold === null) return this.channelFull(ch);
        if (hold !== undefined) index = hold.keyIndex;
      }
      keyIndex = index < 0 ? undefined : index;
      view = viewWithKey(ch, index);
      const setup = this.rt.cfg.setup;
      if (setup) yield setup(view, this.req, this.res);
    } catch (e) {
      if (hold) this.rt.limits.release(hold);
      return this.setupFailed(ch, e);
    }
    return this.setupDone(ch, group, view, keyIndex, hold ?? undefined);
  }

  /** Tokens this request is expected to cost against `tpm` until its usage is reported: body bytes / 4. */
  private tokenEstimate(): number {
    // the bytes read, else the declared length (bounded by the body limit: a header is only a claim)
    const bytes = this.req.rawBody?.length ?? Math.min(Number(this.req.headers['content-length']), this.rt.cfg.bodyLimit);
    return bytes > 0 ? Math.ceil(bytes / 4) : 0;
  }

  /** Every usable key of the channel is at a limit: skipped (attempt reason `limit`), no attempt counted. */
  private channelFull(ch: RegisteredChannel): false {
    this.limitRefused = true;
    this.sawFull = true;
    this.d.attempts.push({ channelId: ch.id, phase: 'setup', reason: 'limit' });
    this.note(`limit ch=${ch.id}`);
    return false;
  }

  /**
   * Channels skipped as full become candidates again (the overflow queue looks again). Their
   * `limit` attempts and trace steps go too, so a request that polls for minutes keeps only the
   * last look's (its record and trace header stay small).
   */
  forgetFull(): void {
    const d = this.d;
    const full = new Set(d.attempts.filter((a) => a.reason === 'limit').map((a) => a.channelId));
    if (full.size !== 0) {
      const failedOtherwise = new Set(d.attempts.filter((a) => a.reason !== 'limit').map((a) => a.channelId));
      d.tried = d.tried.filter((id) => !full.has(id) || failedOtherwise.has(id));
      d.attempts = d.attempts.filter((a) => a.reason !== 'limit');
      d.trace = d.trace.filter((step) => !step.startsWith('limit ch='));
    }
    this.sawFull = false;
  }

  private setupDone(ch: RegisteredChannel, group: string, view: Channel, keyIndex: number | undefined, hold: Hold | undefined): true {
    const d = this.d;
    const { limits } = this.rt;
    if (this.finished) {
      // the client left while the slot or the setup was awaited: nothing stays held for it
      if (hold) limits.release(hold);
    } else {
      if (this.entered !== ch.id) {
        if (this.entered !== undefined) limits.leave(this.entered);
        limits.enter(ch.id);
        this.entered = ch.id;
      }
      if (this.hold !== undefined && this.hold !== hold) limits.release(this.hold);
      this.hold = hold;
    }
    this.current = ch;
    this.currentKeyIndex = keyIndex;
    if (this.firstChosen === undefined) {
      this.firstChosen = ch.id;
      this.firstKeyIndex = keyIndex;
    }
    if (group !== d.selectedGroup) this.groupUpstream = 0;
    d.selectedGroup = group;
    d.selected = true;
    this.toldFailure = false;
    this.res.locals.channel = view;
    return true;
  }

  private setupFailed(ch: RegisteredChannel, e: unknown): false {
    const reason = this.redact(e instanceof NoEnabledKeyError ? e.message : errorText(e, 'setup failed'), ch);
    this.lastSetupError = reason;
    this.d.attempts.push({ channelId: ch.id, phase: 'setup', reason });
    this.note(`setup_failed ch=${ch.id}`);
    callHook(this.rt.cfg, 'fallback', { req: this.req, channelId: ch.id, error: reason });
    this.rt.cfg.logger.warn('channel setup failed, falling back', { channelId: ch.id, error: reason });
    return false;
  }

  /** The 503 for a request that found no channel that sets up. */
  noChannelError(): DistributorError {
    const { model, group } = this.d;
    const shown = group === 'auto' ? `auto(${this.lastGroup ?? this.groups[this.groups.length - 1] ?? ''})` : group;
    const base = `No available channel for model ${model} under group ${shown}`;
    if (group === 'auto' && this.groups.length === 0) return new DistributorError('model_not_found', `${base}: auto groups is not enabled`, 503);
    return new DistributorError('model_not_found', this.lastSetupError ? `${base}; last setup error: ${this.lastSetupError}` : base, 503);
  }

  // ---- an upstream failure ------------------------------------------------------------------

  private stop(reason: StopReason, status?: number): null {
    this.d.stopReason = reason;
    this.note(`stop:${reason}`);
    callHook(this.rt.cfg, 'exhausted', { req: this.req, reason, tried: [...this.d.tried], status });
    if (this.rt.debug) this.rt.cfg.logger.debug?.('retry stopped', { reason, tried: this.d.tried, status });
    return null;
  }

  /**
   * Records an upstream failure of the current channel: the attempt, health, and whether the pin
   * must go. Returns undefined when this attempt's failure was already recorded.
   */
  private async noteFailure(cur: RegisteredChannel, failure: RetryFailure): Promise<{ status?: number; retryable: boolean; keyOnly: boolean } | undefined> {
    if (this.toldFailure) return undefined;
    this.toldFailure = true;
    this.groupUpstream++;
    return this.recordUpstreamFailure(cur, this.currentKeyIndex, failure);
  }

  /**
   * One upstream failure of a channel and key (the current one, or a hedge racer): the attempt
   * and trace step, key rotation, the pin, and health. `keyOnly`: the key cooled and another key
   * of the channel can serve (so the channel pin stays; the next request moves it to that key).
   */
  private async recordUpstreamFailure(ch: RegisteredChannel, keyIndex: number | undefined, failure: RetryFailure): Promise<{ status?: number; retryable: boolean; keyOnly: boolean }> {
    const status = typeof failure.status === 'number' ? failure.status : undefined;
    const reason = failure.error !== undefined ? this.redact(errorText(failure.error, 'upstream failed'), ch).slice(0, 200) : undefined;
    this.d.attempts.push({ channelId: ch.id, phase: 'upstream', status, reason });
    this.note(`upstream ${status ?? 'error'} ch=${ch.id}`);
    const retryable = isRetryable(this.rt.cfg.retry.statusTable, status);
    const keyOnly = this.coolKey(ch, status, failure.retryAfterMs, keyIndex) && this.rt.keys.hasOther(ch, keyIndex as number, this.rt.health.keySkip(ch.id));
    if (retryable && !keyOnly && this.d.affinity?.used && ch.id === this.pinnedId) this.pinFailed = true;
    await this.rt.health.recordFailure(ch, keyIndex, { ...failure, status }, () => callerTextOf(this.req));
    return { status, retryable, keyOnly };
  }

  /**
   * `retry.rotateKey`: a 429 or 401 from one key of a multi-key channel cools that key (for the
   * Retry-After, else the cooldown duration, else 30 s; at most 10 min). True when it did.
   */
  private coolKey(cur: RegisteredChannel, status: number | undefined, retryAfterMs: number | undefined, k: number | undefined): boolean {
    if (!this.rt.cfg.retry.rotateKey || (status !== 429 && status !== 401) || k === undefined || cur.keys.length < 2) return false;
    const given = typeof retryAfterMs === 'number' && retryAfterMs > 0 ? retryAfterMs : undefined;
    const ms = Math.min(given ?? this.rt.cfg.health.cooldown?.durationMs ?? 30_000, 600_000);
    this.rt.health.coolKey(cur, k, ms);
    return true;
  }

  /**
   * A failure of the current channel that must not be retried (a stream cut after the commit
   * point): the attempt, health and pin clearing are recorded, no channel is picked. Calling it
   * (or `retry()`) again for the same attempt records nothing more.
   */
  fail(failure: RetryFailure): Promise<void> {
    const cur = this.current;
    if (!cur || this.finished) return Promise.resolve();
    return this.noteFailure(cur, failure).then(() => undefined);
  }

  /** The relay's retry(): overlapping calls for the same failure share one decision. */
  retry(failure: RetryFailure): Promise<Channel | null> {
    if (this.inflight) return this.inflight;
    const p = this.doRetry(failure);
    this.inflight = p;
    const clear = () => {
      if (this.inflight === p) this.inflight = undefined;
    };
    p.then(clear, clear);
    return p;
  }

  private async doRetry(failure: RetryFailure): Promise<Channel | null> {
    const { cfg, counters } = this.rt;
    const cur = this.current;
    if (!cur || this.finished) return this.stop('no_channel', failure.status);
    const noted = await this.noteFailure(cur, failure);
    // already reported (a second retry() or fail() for the same attempt): same answer, no new record
    if (!noted) return this.d.stopReason ? null : this.stop('no_channel', failure.status);
    const { status, retryable, keyOnly } = noted;
    const refused = retryRefusal({
      specific: this.specific,
      retryable,
      skipRule: !!this.d.affinity?.used && !!this.match?.rule.skipRetryOnFailure,
      retriesMade: this.upstreamRetries,
    }, cfg);
    if (refused) return this.stop(refused, status);
    // The response finished while the failure was being recorded: finalize() already ran, so a
    // budget claimed now would never be released (and no one is left to serve).
    if (this.finished) return this.stop('no_channel', status);
    const claimsBudget = !this.retrying;
    if (claimsBudget) {
      if (!budgetAllows(cfg, counters)) return this.stop('budget', status);
      // claimed before any await, so concurrent retries cannot all pass the budget check
      this.retrying = true;
      counters.retrying++;
    }
    const groups = retryGroups(this.d.group, this.groups, this.d.selectedGroup, this.ctx);
    const from = cur.id;
    // retry.rotateKey: another key of the same channel first (the channel stays in `tried` once)
    let ok = keyOnly && await driveToPromise(this.trySetup(cur, this.d.selectedGroup));
    if (ok) this.note(`rotate_key ch=${cur.id} key=${this.currentKeyIndex}`);
    // Setup failures here are bounded by the channel count (each channel is tried once).
    if (!ok) ok = await driveToPromise(selectWithFallback(this, Number.MAX_SAFE_INTEGER, 'retry', groups, retryStartTier(this.rt, this.groupUpstream)));
    if (!ok && mayWaitForRetryAfter(cfg, failure.retryAfterMs, () => this.stillServes(cur))) {
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
    if (cfg.traceHeader && !this.res.headersSent) this.res.setHeader(TRACE_HEADER, traceHeaderValue(this.d.trace));
    return next;
  }

  /** Can the failed channel still serve this request (for a Retry-After wait on it)? */
  private stillServes(cur: RegisteredChannel): boolean {
    const { registry, health } = this.rt;
    if (cur.status !== ChannelStatus.Enabled || health.isCooling(cur.id)) return false;
    return this.groups.some((g) => registry.serves(cur.id, g, this.d.model));
  }

  // ---- hedging (relay({ hedge })) ------------------------------------------------------------

  /**
   * Starts a hedge: one more channel for the same request while the current one has not answered
   * (no failure recorded for it). Allowed only while `retry()` would allow one (not a named
   * channel, no skip rule on a used pin, retries left, the budget). The current channel stays
   * current until `settleHedge()`; both hold their slots meanwhile. Resolves to the hedge's
   * channel, or null.
   */
  async hedge(): Promise<Channel | null> {
    const { cfg, counters } = this.rt;
    const cur = this.current;
    if (!cur || this.finished || this.race) return null;
    const refused = retryRefusal({
      specific: this.specific, retryable: true, skipRule: !!this.d.affinity?.used && !!this.match?.rule.skipRetryOnFailure, retriesMade: this.upstreamRetries,
    }, cfg);
    if (refused) return null;
    if (!this.retrying) {
      if (!budgetAllows(cfg, counters)) return null;
      this.retrying = true;
      counters.retrying++;
    }
    const primary = this.racer();
    // the hedge's setup must neither release the primary's slot nor leave its in-flight count;
    // finalize() releases them from here if the client leaves meanwhile
    const race: NonNullable<RequestRun['race']> = (this.race = { primary });
    this.hold = undefined;
    this.entered = undefined;
    let ok = false;
    try {
      const groups = retryGroups(this.d.group, this.groups, this.d.selectedGroup, this.ctx);
      ok = await driveToPromise(selectWithFallback(this, Number.MAX_SAFE_INTEGER, 'hedge', groups, retryStartTier(this.rt, this.groupUpstream)));
    } catch (e) {
      this.race = undefined;
      if (!this.finished) this.restore(primary);
      throw e;
    }
    race.primary = undefined;
    // the client left during the setup: finalize() has released both sides already
    if (this.finished) {
      this.race = undefined;
      return null;
    }
    const other = ok ? this.racer() : undefined;
    this.restore(primary);
    if (!other) {
      this.race = undefined;
      return null;
    }
    race.hedge = other;
    this.upstreamRetries++;
    return other.view;
  }

  /**
   * Ends a hedge race: `winner` becomes (or stays) the current channel. The other is released;
   * with `loserFailure` it failed (recorded like any upstream failure), else it was aborted as
   * the loser and counts neither way. Only the winner can be pinned.
   */
  async settleHedge(winner: 'primary' | 'hedge', loserFailure?: RetryFailure): Promise<void> {
    const h = this.race?.hedge;
    if (!h) return;
    this.race = undefined;
    const primary = this.racer();
    const loser = winner === 'hedge' ? primary : h;
    if (winner === 'hedge') {
      this.restore(h);
      // the primary answered nothing usable: the hedge is the first channel that served
      if (this.firstChosen === primary.ch.id) {
        this.firstChosen = h.ch.id;
        this.firstKeyIndex = h.key;
      }
      if (primary.group !== h.group) this.groupUpstream = 0;
    }
    this.dropRacer(loser);
    if (loserFailure) await this.recordUpstreamFailure(loser.ch, loser.key, loserFailure);
    else {
      this.d.attempts.push({ channelId: loser.ch.id, phase: 'upstream', reason: 'hedge_lost' });
      this.note(`hedge_lost ch=${loser.ch.id}`);
    }
    if (winner === 'hedge') this.note(`hedge_won ch=${h.ch.id}`);
    if (this.rt.cfg.traceHeader && !this.res.headersSent) this.res.setHeader(TRACE_HEADER, traceHeaderValue(this.d.trace));
  }

  private racer(): Racer {
    return {
      ch: this.current as RegisteredChannel, key: this.currentKeyIndex, hold: this.hold, entered: this.entered,
      view: this.res.locals.channel as Channel, group: this.d.selectedGroup,
    };
  }

  private restore(r: Racer): void {
    this.current = r.ch;
    this.currentKeyIndex = r.key;
    this.hold = r.hold;
    this.entered = r.entered;
    this.res.locals.channel = r.view;
    this.d.selectedGroup = r.group;
  }

  /** Gives back a racer's slot and in-flight count (never those of the current channel). */
  private dropRacer(r: Racer): void {
    const { limits } = this.rt;
    if (r.hold !== undefined && r.hold !== this.hold) limits.release(r.hold);
    if (r.entered !== undefined && r.entered !== this.entered) limits.leave(r.entered);
  }

  // ---- usage --------------------------------------------------------------------------------

  /** The answer's token usage: the `usage` hook and the rule's cache accounting. */
  reportUsage(raw: UsageReport): void {
    const cur = this.current;
    const usage = cleanUsage(raw);
    // once per request: the answer that served is reported once, however the relay retried
    if (!cur || !usage || this.usageReported) return;
    this.usageReported = true;
    if (this.hold !== undefined && cur.limits?.tpm) this.rt.limits.correctTokens(this.hold, (usage.inputTokens ?? 0) + (usage.outputTokens ?? 0));
    const info = this.d.affinity;
    const label: AffinityLabel = info ? (info.used && cur.id === this.pinnedId ? 'hit' : 'miss') : 'none';
    this.rt.usage.usage(this.match?.rule, label, usage);
    const { cfg } = this.rt;
    if (cfg.on.usage) callHook(cfg, 'usage', { req: this.req, channelId: cur.id, keyIndex: this.currentKeyIndex, rule: info?.rule, affinity: label, usage });
  }

  /** The relay's latency report for the current channel (`lowest-latency` learns from it). */
  reportLatency(ms: number): void {
    const cur = this.current;
    if (!cur || this.latencyReported || typeof ms !== 'number' || !(ms >= 0 && ms <= 600_000)) return;
    this.latencyReported = true;
    this.rt.latency.record(cur.id, this.d.model, ms);
  }

  // ---- the response is done -----------------------------------------------------------------

  /** Called once when the response finishes (or the connection closes first). */
  finalize(finished: boolean): void {
    if (this.finished) return;
    this.finished = true;
    if (!finished) {
      this.clientGone = true;
      this.abort?.abort(clientGoneReason());
    }
    const { counters, cfg, guard, health, limits } = this.rt;
    counters.active--;
    if (this.retrying) counters.retrying--;
    this.wake?.();
    if (this.hold !== undefined) {
      limits.release(this.hold);
      // a failed answer without a usage report consumed no tokens we know of: its estimate goes
      const ok = finished && this.res.statusCode < 400 && !this.toldFailure;
      if (!ok && !this.usageReported && this.current?.limits?.tpm) limits.correctTokens(this.hold, 0);
    }
    if (this.entered !== undefined) limits.leave(this.entered);
    const race = this.race;
    if (race) {
      this.race = undefined;
      if (race.hedge) this.dropRacer(race.hedge);
      const primary = race.primary;
      if (primary?.hold !== undefined) limits.release(primary.hold);
      if (primary?.entered !== undefined) limits.leave(primary.entered);
    }
    const cur = this.current;
    if (!cur) return;
    const status = this.res.statusCode;
    // A last attempt reported as failed (retry() gave up, or fail() after the commit point) is a
    // failure even when the wire status, already sent, says 200.
    const success = finished && status < 400 && !this.toldFailure;
    if (success) health.recordSuccess(cur);
    // A response that finished with a failure status, or was cut after its headers with one (a
    // relay marking a broken stream), without a report: the attempt is recorded and a used pin
    // that failed is cleared, but health only hears of it with `health.countUnreported`: the
    // status may be the gateway's own (a 404 route, its own user check, its body limit).
    else if ((finished || (this.res.headersSent && status >= 500)) && !this.toldFailure) {
      if (isRetryable(cfg.retry.statusTable, status) && this.d.affinity?.used && cur.id === this.pinnedId) this.pinFailed = true;
      this.d.attempts.push({ channelId: cur.id, phase: 'upstream', status });
      if (countsUnreported(cfg, status)) void health.recordFailure(cur, this.currentKeyIndex, { status });
    }
    const match = this.match;
    const info = this.d.affinity;
    if (!match || !info) return;
    const action = decidePin({
      success, hit: info.hit, used: info.used, cleared: info.cleared, pinFailed: this.pinFailed,
      servedPinned: this.servesPin(cur), provisional: this.provisional, reserved: this.reservedValue !== undefined,
      saturated: info.stale === 'saturated',
    }, cfg.affinity);
    if (action === 'clear') {
      const pinned = this.pinnedValue as string;
      void guard.run('clearPin', () => cfg.store.clearPin(match.key, pinned), false);
      if (!success) info.cleared = true;
    } else if (action === 'release') {
      const own = this.reservedValue as string;
      void guard.run('clearPin', () => cfg.store.clearPin(match.key, own), false);
    } else if (action !== 'none') {
      const value = action === 'write-served'
        ? this.pinOf(cur, this.currentKeyIndex)
        : this.pinOf(this.rt.registry.get(this.firstChosen ?? cur.id) ?? cur, this.firstChosen === undefined ? this.currentKeyIndex : this.firstKeyIndex);
      void guard.run('setPin', () => cfg.store.setPin(match.key, value, match.rule.ttlMs), undefined);
    }
  }

  /** The pin value for a channel and key: key-level when `affinity.keyLevel` and the channel has keys to choose from. */
  pinOf(ch: RegisteredChannel, keyIndex: number | undefined): string {
    return pinValue(ch.id, this.rt.cfg.affinity.keyLevel && ch.keys.length > 1 ? keyIndex : undefined);
  }

  /** Does the pin read name this channel (and, for a key-level pin, the key it used)? */
  servesPin(cur: RegisteredChannel): boolean {
    if (cur.id !== this.pinnedId) return false;
    if (!this.rt.cfg.affinity.keyLevel || cur.keys.length < 2) return true;
    return this.currentKeyIndex === this.pinnedKey;
  }
}
