// Channel health state: cooldowns after repeated failures and auto-disables, mirrored locally (so
// selection does no I/O) and shared through the store (push events plus a polling backstop). What
// counts as a failure of the channel is decided in ./attribution.ts.
import type { ChannelRegistry, RegisteredChannel } from '../channels/registry';
import type { Config } from '../options';
import type { HealthMark, HealthSnapshot, StoreEvent } from '../stores/store';
import { OutlierCounter } from './outlier';
import { autoDisableMatches, countsAsFailure, type CallerText } from './attribution';
import { ChannelStatus, type RetryFailure } from '../types';
import type { StoreGuard } from '../store-guard';
import { callHook } from '../hooks';

export class HealthBook {
  private cooldowns = new Map<number, number>();
  private statusOverrides = new Map<number, ChannelStatus>();
  private keyOverrides = new Map<number, number[]>();
  private timer?: NodeJS.Timeout;
  private probeTimer?: NodeJS.Timeout;
  private probing = false;
  private unsubscribe?: () => void;
  private unwatch?: () => void;
  private applyingRemote = false;
  /** When each cooldown was learnt (a snapshot older than that does not erase it). */
  private cooldownSeen = new Map<number, number>();
  /** Cooldowns counted locally while the store was unreachable (no snapshot erases them). */
  private localCooldowns = new Set<number>();
  private localFailures = new Map<number, { count: number; since: number }>();
  /** Channels this instance saw fail within the cooldown window (a success then resets the count). */
  private recentFailures = new Map<number, number>();
  /** Local status/key changes not yet confirmed by the store: retried, and never reverted by a snapshot. */
  private pending = new Map<number, { status?: ChannelStatus | null; disabledKeys?: number[]; version: number }>();
  private version = 0;
  /** Outlier ejections: channel id -> end and ejections in a row (the last one kept after it ends). */
  private ejections = new Map<number, { until: number; count: number }>();
  /** Channels ejected now (a fast "none" for selection). */
  private ejectedNow = 0;
  /** Cooling keys (`retry.rotateKey`): channel id -> key index -> end. */
  private keyCools = new Map<number, Map<number, number>>();
  private readonly outlier?: OutlierCounter;

  constructor(
    private readonly cfg: Config,
    private readonly registry: ChannelRegistry,
    private readonly guard: StoreGuard,
  ) {
    if (cfg.health.outlier) this.outlier = new OutlierCounter(cfg.health.outlier);
  }

  /** Starts listening: store events, a polling backstop, and local registry changes to publish. */
  start(): void {
    const { store } = this.cfg;
    this.unwatch = this.registry.onChange((change) => {
      if (change.type === 'reload') {
        this.reapplyOverrides();
        return;
      }
      if (change.type === 'upsert') {
        this.adoptUpsert(change.id);
        return;
      }
      if (change.source !== 'local' || this.applyingRemote) return;
      if (change.type === 'status') {
        const status = change.status === ChannelStatus.Enabled ? null : change.status;
        if (status === null) this.statusOverrides.delete(change.id);
        else this.statusOverrides.set(change.id, status);
        void this.publish(change.id, { status });
        if (status === null) {
          // an operator's re-enable is a fresh start for the channel's keys too
          this.keyCools.delete(change.id);
          this.restoreKeysIfNoneLeft(change.id);
        }
      } else if (change.type === 'keys') {
        if (change.disabledKeys.length) this.keyOverrides.set(change.id, change.disabledKeys);
        else this.keyOverrides.delete(change.id);
        void this.publish(change.id, { disabledKeys: change.disabledKeys });
      }
    });
    if (store.subscribe) {
      try {
        this.unsubscribe = store.subscribe((e) => this.onEvent(e));
      } catch (e) {
        this.guard.report('subscribe', e);
      }
    }
    void this.sync();
    if (this.cfg.health.probe) {
      this.probeTimer = setInterval(() => void this.probeOnce().catch(() => undefined), this.cfg.health.probe.intervalMs);
      this.probeTimer.unref();
    }
    if (!store.localKeys || !store.subscribe) {
      this.timer = setInterval(() => void this.sync(), this.cfg.syncIntervalMs);
      this.timer.unref();
    }
  }

  /** An upserted channel's own status and keys become the shared truth (overrides replaced). */
  private adoptUpsert(id: number): void {
    const ch = this.registry.get(id);
    if (!ch) return;
    const status = ch.status === ChannelStatus.Enabled ? null : ch.status;
    const disabledKeys = [...ch.disabledKeys].sort((a, b) => a - b);
    const hadStatus = this.statusOverrides.has(id);
    const hadKeys = this.keyOverrides.has(id);
    if (status === null) this.statusOverrides.delete(id);
    else this.statusOverrides.set(id, status);
    if (disabledKeys.length) this.keyOverrides.set(id, disabledKeys);
    else this.keyOverrides.delete(id);
    const patch: { status?: ChannelStatus | null; disabledKeys?: number[] } = {};
    if (status !== null || hadStatus) patch.status = status;
    if (disabledKeys.length || hadKeys) patch.disabledKeys = disabledKeys;
    if (patch.status !== undefined || patch.disabledKeys !== undefined) void this.publish(id, patch);
  }

  /**
   * Re-enabling a multi-key channel whose every key is off (health disabled the last one) brings
   * back the keys of its configuration; otherwise it would be status 1 yet fail every setup.
   */
  private restoreKeysIfNoneLeft(id: number): void {
    const ch = this.registry.get(id);
    if (!ch || ch.keys.length < 2 || ch.disabledKeys.size < ch.keys.length) return;
    for (let i = 0; i < ch.keys.length; i++) if (!ch.disabledKeys.has(i)) return;
    const configured = [...new Set(ch.input.disabledKeys ?? [])].filter((i) => i < ch.keys.length).sort((a, b) => a - b);
    if (configured.length >= ch.keys.length) return;
    this.registry.applyDisabledKeys(id, configured, 'local');
  }

  /**
   * Writes a local change to the store. Until the store confirms it, the change stays pending:
   * it is retried by every sync and no snapshot reverts it (so an outage loses nothing).
   */
  private async publish(id: number, patch: { status?: ChannelStatus | null; disabledKeys?: number[] }): Promise<void> {
    const version = ++this.version;
    const entry = { ...this.pending.get(id), ...patch, version };
    this.pending.set(id, entry);
    const ok = await this.guard.run('setOverride', async () => {
      await this.cfg.store.setOverride(id, patch);
      return true;
    }, false);
    if (ok && this.pending.get(id)?.version === version) this.pending.delete(id);
  }

  private async flushPending(): Promise<void> {
    for (const [id, entry] of [...this.pending]) {
      const patch: { status?: ChannelStatus | null; disabledKeys?: number[] } = {};
      if (entry.status !== undefined) patch.status = entry.status;
      if (entry.disabledKeys !== undefined) patch.disabledKeys = entry.disabledKeys;
      const ok = await this.guard.run('setOverride', async () => {
        await this.cfg.store.setOverride(id, patch);
        return true;
      }, false);
      if (!ok) return; // still down: keep everything pending
      if (this.pending.get(id)?.version === entry.version) this.pending.delete(id);
    }
  }

  /**
   * One probe round: each auto-disabled channel (status 3) whose check resolves true is re-enabled
   * (shared like any local status change). Manually disabled channels (2) are never probed.
   */
  async probeOnce(): Promise<number> {
    const probe = this.cfg.health.probe;
    if (!probe || this.probing) return 0;
    this.probing = true;
    let enabled = 0;
    try {
      for (const ch of this.registry.list()) {
        if (ch.status !== ChannelStatus.AutoDisabled) continue;
        let ok = false;
        try {
          ok = (await probe.check(ch.view)) === true;
        } catch (e) {
          this.cfg.logger.warn('health probe threw', { channelId: ch.id, error: e instanceof Error ? e.message : String(e) });
        }
        // re-read: the channel may have been changed or removed while the check ran
        if (!ok || this.registry.get(ch.id)?.status !== ChannelStatus.AutoDisabled) continue;
        this.registry.setStatus(ch.id, ChannelStatus.Enabled);
        enabled++;
        this.cfg.logger.warn('channel re-enabled by the health probe', { channelId: ch.id });
        callHook(this.cfg, 'health', { channelId: ch.id, event: 're_enabled' });
      }
    } finally {
      this.probing = false;
    }
    return enabled;
  }

  stop(): void {
    if (this.probeTimer) clearInterval(this.probeTimer);
    if (this.timer) clearInterval(this.timer);
    this.unsubscribe?.();
    this.unwatch?.();
  }

  /** Is the channel cooling down right now? (local, no I/O) */
  isCooling(id: number, now = Date.now()): boolean {
    const until = this.cooldowns.get(id);
    if (until === undefined) return false;
    if (until > now) return true;
    this.dropCooldown(id);
    return false;
  }

  cooldownUntil(id: number): number | undefined {
    return this.isCooling(id) ? this.cooldowns.get(id) : undefined;
  }

  /**
   * Can selection not use this channel now: cooling, ejected, or every enabled key cooling?
   * (local, no I/O; one map lookup when nothing is ejected and no key cools)
   */
  unavailable(id: number, now = Date.now()): boolean {
    return this.unavailableReason(id, now) !== undefined;
  }

  /** Why `unavailable()` (a pin's stale reason), or undefined when the channel can serve. */
  unavailableReason(id: number, now = Date.now()): 'cooling' | 'ejected' | undefined {
    if (this.cooldowns.size !== 0 && this.isCooling(id, now)) return 'cooling';
    if (this.ejectedNow !== 0 && this.isEjected(id, now)) return 'ejected';
    if (this.keyCools.size !== 0 && this.allKeysCooling(id, now)) return 'cooling';
    return undefined;
  }

  isEjected(id: number, now = Date.now()): boolean {
    const e = this.ejections.get(id);
    return e !== undefined && e.until > now;
  }

  ejectedUntil(id: number): number | null {
    const e = this.ejections.get(id);
    return e !== undefined && e.until > Date.now() ? e.until : null;
  }

  /** Is key `k` of the channel cooling (`retry.rotateKey`)? */
  keyCooling(id: number, k: number, now = Date.now()): boolean {
    const m = this.keyCools.get(id);
    if (m === undefined) return false;
    const until = m.get(k);
    if (until === undefined) return false;
    if (until > now) return true;
    m.delete(k);
    if (m.size === 0) this.keyCools.delete(id);
    return false;
  }

  /** Key index -> end, for the keys of a channel cooling now. */
  coolingKeys(id: number): Record<number, number> {
    const out: Record<number, number> = {};
    const now = Date.now();
    for (const [k, until] of this.keyCools.get(id) ?? []) if (until > now) out[k] = until;
    return out;
  }

  /** A predicate for the key picker: undefined when no key of the channel cools (the fast case). */
  keySkip(id: number): ((k: number) => boolean) | undefined {
    if (!this.keyCools.has(id)) return undefined;
    const now = Date.now();
    return (k) => this.keyCooling(id, k, now);
  }

  private allKeysCooling(id: number, now: number): boolean {
    const m = this.keyCools.get(id);
    if (m === undefined) return false;
    const ch = this.registry.get(id);
    if (!ch || ch.keys.length < 2) return false;
    for (let k = 0; k < ch.keys.length; k++) if (!ch.disabledKeys.has(k) && !this.keyCooling(id, k, now)) return false;
    return true;
  }

  /**
   * Cools one key of a multi-key channel (`retry.rotateKey`: a 429 or 401 from it) for `ms`, here
   * and, through the store, on every instance.
   */
  coolKey(ch: RegisteredChannel, k: number, ms: number): void {
    const until = Date.now() + ms;
    this.shareMark({ kind: 'key', channelId: ch.id, keyIndex: k, until });
    this.cfg.logger.warn('channel key cooling down', { channelId: ch.id, keyIndex: k, until: new Date(until).toISOString() });
    callHook(this.cfg, 'health', { channelId: ch.id, event: 'key_cooldown', keyIndex: k, until });
  }

  /** A mark made here: applied now, and sent to the store for the other instances (fails soft). */
  private shareMark(mark: HealthMark): void {
    this.applyMark(mark);
    void this.guard.run('setMark', async () => this.cfg.store.setMark?.(mark), undefined);
  }

  /** Applies an ejection or a cooling key learnt from any instance (a later end wins). */
  private applyMark(m: HealthMark): void {
    if (m.kind === 'key') {
      if (m.keyIndex === undefined) return;
      let keys = this.keyCools.get(m.channelId);
      if (m.until <= Date.now()) {
        // an ended mark removes only what it describes, never a later cooldown learnt here
        if (keys && (keys.get(m.keyIndex) ?? 0) <= m.until) keys.delete(m.keyIndex);
        if (keys && keys.size === 0) this.keyCools.delete(m.channelId);
        return;
      }
      if (!keys) this.keyCools.set(m.channelId, (keys = new Map()));
      if ((keys.get(m.keyIndex) ?? 0) < m.until) keys.set(m.keyIndex, m.until);
      return;
    }
    const had = this.ejections.get(m.channelId);
    if (had && had.until >= m.until) return;
    this.ejections.set(m.channelId, { until: m.until, count: m.count ?? (had ? had.count + 1 : 1) });
    this.countEjected();
  }

  private countEjected(): void {
    const now = Date.now();
    let n = 0;
    for (const e of this.ejections.values()) if (e.until > now) n++;
    this.ejectedNow = n;
  }

  /**
   * One upstream attempt's outcome for outlier ejection. Ejects the channel when its failure rate
   * over the window is reached and the ejection cap of every group and model it serves allows it.
   */
  private observeOutlier(ch: RegisteredChannel, failed: boolean): void {
    const outlier = this.outlier;
    if (!outlier) return;
    const now = Date.now();
    if (!outlier.observe(ch.id, failed, now) || this.isEjected(ch.id, now)) return;
    this.countEjected();
    if (!this.ejectionAllowed(ch, outlier, now)) return;
    const policy = this.cfg.health.outlier as NonNullable<Config['health']['outlier']>;
    const prev = this.ejections.get(ch.id);
    // ejections in a row: the previous one ended recently (within the longest ejection)
    const count = prev && prev.until > now - policy.maxEjectionMs ? prev.count + 1 : 1;
    const until = now + outlier.ejectionMs(count);
    outlier.reset(ch.id);
    this.shareMark({ kind: 'eject', channelId: ch.id, until, count });
    this.cfg.logger.warn('channel ejected as an outlier', { channelId: ch.id, until: new Date(until).toISOString(), ejections: count });
    callHook(this.cfg, 'health', { channelId: ch.id, event: 'ejected', until });
  }

  /** No group and model the channel serves may have more than maxEjectionPercent of its channels ejected. */
  private ejectionAllowed(ch: RegisteredChannel, outlier: OutlierCounter, now: number): boolean {
    for (const g of ch.groups) {
      for (const m of ch.models) {
        let total = 0;
        let ejected = 0;
        for (const tier of this.registry.tiers(g, m) ?? []) {
          for (const c of tier.channels) {
            total++;
            if (c.id !== ch.id && this.isEjected(c.id, now)) ejected++;
          }
        }
        if (!outlier.allows(ejected, total)) return false;
      }
    }
    return true;
  }

  /** Re-reads every cooldown and override from the store (backstop for missed events). */
  async sync(): Promise<void> {
    try {
      if (this.pending.size) await this.flushPending();
      const started = Date.now();
      const snap = await this.guard.run<HealthSnapshot | null>('loadHealth', () => this.cfg.store.loadHealth(), null);
      if (snap && typeof snap === 'object') this.applySnapshot(snap, started);
    } catch (e) {
      // a malformed snapshot from a custom store: report it, never reject (sync runs unawaited)
      this.guard.report('loadHealth', e);
    }
  }

  /** Applies a snapshot read at `readAt` (what was learnt after that, or is still pending, is kept). */
  applySnapshot(snap: HealthSnapshot, readAt = Date.now()): void {
    const now = Date.now();
    const seen = new Set<number>();
    for (const [id, until] of Object.entries(snap.cooldowns)) {
      seen.add(Number(id));
      if (until > now) this.setCooldown(Number(id), until, false);
    }
    for (const id of [...this.cooldowns.keys()]) {
      if (!seen.has(id) && !this.localCooldowns.has(id) && (this.cooldownSeen.get(id) ?? 0) < readAt) this.dropCooldown(id);
    }
    for (const m of Array.isArray(snap.marks) ? snap.marks : []) this.applyMark(m);
    // Statuses: apply only what changed since the last snapshot, so a local replaceAll()
    // is not overwritten by an override it already reflects.
    const statuses = new Map(Object.entries(snap.statuses).map(([k, v]) => [Number(k), v] as const));
    const pendingStatus = (id: number) => this.pending.get(id)?.status !== undefined;
    const pendingKeys = (id: number) => this.pending.get(id)?.disabledKeys !== undefined;
    for (const [id, status] of statuses) {
      if (this.statusOverrides.get(id) !== status && !pendingStatus(id)) this.onEvent({ type: 'status', channelId: id, status });
    }
    for (const id of [...this.statusOverrides.keys()]) {
      if (!statuses.has(id) && !pendingStatus(id)) this.onEvent({ type: 'status', channelId: id, status: null });
    }
    const keys = new Map(Object.entries(snap.disabledKeys).map(([k, v]) => [Number(k), v] as const));
    for (const [id, list] of keys) {
      if (String(this.keyOverrides.get(id)) !== String(list) && !pendingKeys(id)) this.onEvent({ type: 'keys', channelId: id, disabledKeys: list });
    }
    for (const id of [...this.keyOverrides.keys()]) {
      if (!keys.has(id) && !pendingKeys(id)) this.onEvent({ type: 'keys', channelId: id, disabledKeys: [] });
    }
  }

  private setCooldown(id: number, until: number, local: boolean): void {
    this.cooldowns.set(id, until);
    this.cooldownSeen.set(id, Date.now());
    if (local) this.localCooldowns.add(id);
    else this.localCooldowns.delete(id);
  }

  private dropCooldown(id: number): void {
    this.cooldowns.delete(id);
    this.cooldownSeen.delete(id);
    this.localCooldowns.delete(id);
  }

  /** Applies a change made by any instance (including this one, idempotently). */
  onEvent(e: StoreEvent): void {
    this.applyingRemote = true;
    try {
      if (e.type === 'cooldown') {
        if (e.until > Date.now()) this.setCooldown(e.channelId, e.until, false);
        else this.dropCooldown(e.channelId);
      } else if (e.type === 'mark') {
        const { type: _type, ...mark } = e;
        this.applyMark(mark);
      } else if (e.type === 'status') {
        if (e.status === null) {
          const had = this.statusOverrides.delete(e.channelId);
          if (had) {
            this.keyCools.delete(e.channelId);
            this.registry.applyStatus(e.channelId, ChannelStatus.Enabled, 'remote');
          }
        } else {
          this.statusOverrides.set(e.channelId, e.status);
          if (this.registry.get(e.channelId)?.status !== e.status) this.registry.applyStatus(e.channelId, e.status, 'remote');
        }
      } else {
        if (e.disabledKeys.length) this.keyOverrides.set(e.channelId, [...e.disabledKeys]);
        else this.keyOverrides.delete(e.channelId);
        if (this.registry.get(e.channelId)) this.registry.applyDisabledKeys(e.channelId, e.disabledKeys, 'remote');
      }
    } finally {
      this.applyingRemote = false;
    }
  }

  private reapplyOverrides(): void {
    this.applyingRemote = true;
    try {
      for (const [id, status] of this.statusOverrides) {
        if (this.registry.get(id) && this.registry.get(id)?.status !== status) this.registry.applyStatus(id, status, 'remote');
      }
      for (const [id, keys] of this.keyOverrides) if (this.registry.get(id)) this.registry.applyDisabledKeys(id, keys, 'remote');
    } finally {
      this.applyingRemote = false;
    }
  }

  /**
   * Feeds one upstream failure of a channel into the health rules. Only failures reported as the
   * upstream's reach here (`retry()`, `fail()`, `relay()`), or with `health.countUnreported` a
   * 5xx/429 seen at `finish` (then `callerText` is absent and no auto-disable rule applies).
   * Cooldowns go through the store; an auto-disable updates the registry (which publishes it to
   * the other instances).
   */
  async recordFailure(ch: RegisteredChannel, keyIndex: number | undefined, failure: RetryFailure, callerText?: CallerText): Promise<void> {
    const { cooldown, autoDisable } = this.cfg.health;
    if (autoDisable && ch.autoBan && callerText && autoDisableMatches(autoDisable, failure, callerText)) this.disable(ch, keyIndex);
    this.observeOutlier(ch, countsAsFailure(failure.status));
    if (cooldown && countsAsFailure(failure.status)) {
      const now = Date.now();
      this.recentFailures.set(ch.id, now);
      const shared = await this.guard.run<number | null | 'unavailable'>('recordFailure', () => this.cfg.store.recordFailure(ch.id, cooldown, now), 'unavailable');
      // Store down: count locally, so a failing channel still cools down on this instance.
      const until = shared === 'unavailable' ? this.countLocally(ch.id, cooldown, now) : shared;
      if (until) {
        this.setCooldown(ch.id, until, shared === 'unavailable');
        this.cfg.logger.warn('channel cooling down', { channelId: ch.id, until: new Date(until).toISOString() });
        callHook(this.cfg, 'health', { channelId: ch.id, event: 'cooldown', until });
      }
    }
  }

  /**
   * A success forgets the channel's counted failures, so a cooldown needs N failures in a row
   * within the window. Only channels this instance saw fail recently cost a store call.
   */
  recordSuccess(ch: RegisteredChannel): void {
    this.observeOutlier(ch, false);
    const cooldown = this.cfg.health.cooldown;
    if (!cooldown) return;
    const at = this.recentFailures.get(ch.id);
    if (at === undefined) return;
    this.recentFailures.delete(ch.id);
    this.localFailures.delete(ch.id);
    if (Date.now() - at > cooldown.windowMs || !this.cfg.store.recordSuccess) return;
    void this.guard.run('recordSuccess', () => (this.cfg.store.recordSuccess as (id: number) => Promise<void>)(ch.id), undefined);
  }

  private countLocally(id: number, policy: { failures: number; windowMs: number; durationMs: number }, now: number): number | null {
    let f = this.localFailures.get(id);
    if (!f || now - f.since > policy.windowMs) this.localFailures.set(id, (f = { count: 0, since: now }));
    if (++f.count < policy.failures) return null;
    this.localFailures.delete(id);
    return now + policy.durationMs;
  }

  private disable(ch: RegisteredChannel, keyIndex: number | undefined): void {
    if (ch.keys.length > 1 && keyIndex !== undefined) {
      const keys = new Set(ch.disabledKeys);
      keys.add(keyIndex);
      this.registry.applyDisabledKeys(ch.id, [...keys].sort((a, b) => a - b), 'local');
      callHook(this.cfg, 'health', { channelId: ch.id, event: 'key_disabled', keyIndex });
      this.cfg.logger.warn('channel key auto-disabled', { channelId: ch.id, keyIndex });
      if (keys.size < ch.keys.length) return;
    }
    if (ch.status === ChannelStatus.AutoDisabled) return;
    this.registry.applyStatus(ch.id, ChannelStatus.AutoDisabled, 'local');
    this.cfg.logger.warn('channel auto-disabled', { channelId: ch.id });
    callHook(this.cfg, 'health', { channelId: ch.id, event: 'auto_disabled' });
  }
}
