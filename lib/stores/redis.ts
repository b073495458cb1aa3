// RedisStore: pins and channel health shared by every instance on one Redis (or Redis Cluster).
// Raw commands through a user-supplied sender (no runtime Redis import), Lua for every
// read-then-write (EVALSHA, EVAL on NOSCRIPT), a timeout on every call and a short back-off
// after consecutive transport failures (an error reply such as OOM or READONLY fails one call and
// never starts it). Pin writes carry their write time, so a late write never replaces a newer pin,
// and a pin write skipped by the back-off or timed out is retried once when Redis answers again.
import { integerAtLeast, nonNegativeNumber, positiveNumber } from '../check';
import { DistributorError } from '../errors';
import { ChannelStatus } from '../types';
import {
  errorMessage, isErrorReply, isNoScript, replyArray, replyInt, replyPairs, replyPin, replyScan, replyText,
} from './redis-reply';
import {
  CLEAR_COOLDOWN, CLEAR_PIN, GET_PIN, LOAD_HEALTH, RECORD_FAILURE, RESERVE_PIN, SET_OVERRIDE, SET_PIN, ACQUIRE_SLOT, ADD_TOKENS, SET_MARK, type LuaScript,
} from './redis-scripts';
import { CONCURRENCY_RETRY_MS, LIMIT_WINDOW_MS } from './slots';
import type { CooldownPolicy, HealthMark, HealthSnapshot, SlotReply, SlotRequest, Store, StoreEvent } from './store';

/** Sends one raw command, e.g. `['SET', 'k', 'v', 'PX', '1000']`. */
export type RedisSendCommand = (args: string[]) => Promise<unknown>;

/** What a cluster sender gets: the key that routes the command, and the command itself. */
export interface RedisClusterCommand {
  /** The key the command touches (undefined for keyless commands). */
  key: string | undefined;
  isReadOnly: boolean;
  command: string[];
}

/** Sends one raw command to the node owning `key` (node-redis: `cluster.sendCommand(key, isReadOnly, command)`). */
export type RedisSendCommandCluster = (c: RedisClusterCommand) => Promise<unknown>;

/** The part of a node-redis (v5+) client the store uses. */
export interface RedisCommandClient {
  sendCommand(args: string[]): Promise<unknown>;
}

/** The part of a node-redis (v5+) client or cluster in subscribe mode the store uses. */
export interface RedisPubSubClient {
  subscribe(channel: string, listener: RedisMessageListener): Promise<unknown>;
  unsubscribe(channel: string, listener?: RedisMessageListener): Promise<unknown>;
}

/** A pub/sub listener (strings normally; Buffers when a client is in buffer mode). */
export type RedisMessageListener = (message: string | Buffer, channel: string | Buffer) => void;

/**
 * Subscribes `onMessage` to `channel` and returns the function that unsubscribes it (ioredis and
 * other clients: see docs/stores.md).
 */
export type RedisSubscribeFunction = (channel: string, onMessage: (message: string | Buffer) => void) => () => unknown;

/** A master node for SCAN: a raw sender or a node-redis client. */
export type RedisScanNode = RedisSendCommand | RedisCommandClient;

interface RedisStoreCommonOptions {
  /** Prefix of every key (and of the events channel). Default `'ecd:'`. */
  prefix?: string;
  /** Longest wait for any one store operation, in ms. Default 200. */
  timeoutMs?: number;
  /**
   * After `failuresBeforeBackoff` consecutive transport failures or timeouts, calls fail fast for
   * this many ms before Redis is tried again (0: never). Error replies (OOM, READONLY...) never
   * start it. Default 1000.
   */
  backoffMs?: number;
  /**
   * Consecutive transport failures or timeouts (connection refused or closed, no answer within
   * `timeoutMs`) that start the back-off; any answer from Redis, an error reply included, resets
   * the count. An integer >= 1. Default 2.
   */
  failuresBeforeBackoff?: number;
  /**
   * Pushes health changes between instances (otherwise they arrive by polling only, within the
   * distributor's `syncIntervalMs`). A separate connected node-redis client or cluster used only
   * for pub/sub (`client.duplicate()`), or a `(channel, onMessage) => unsubscribe` function.
   */
  subscriber?: RedisPubSubClient | RedisSubscribeFunction;
  /**
   * Master nodes that `clearPins` / `countPins` SCAN. Default: the one connection the store has.
   * Required with `sendCommandCluster` and with an ioredis Cluster (SCAN would see one node only).
   */
  masters?: () => Iterable<RedisScanNode> | Promise<Iterable<RedisScanNode>>;
  /** Told about background failures (a subscription that could not start). Default: ignored. */
  onError?: (error: Error, operation: string) => void;
}

/** Options of `RedisStore`: exactly one of `client`, `sendCommand` or `sendCommandCluster`. */
export type RedisStoreOptions = RedisStoreCommonOptions & (
  | { /** A connected node-redis v5+ client. */ client: RedisCommandClient; sendCommand?: undefined; sendCommandCluster?: undefined }
  | { /** `(args) => ioredis.call(args[0], ...args.slice(1))` */ sendCommand: RedisSendCommand; client?: undefined; sendCommandCluster?: undefined }
  | { /** `({ key, isReadOnly, command }) => cluster.sendCommand(key, isReadOnly, command)` */ sendCommandCluster: RedisSendCommandCluster; client?: undefined; sendCommand?: undefined }
);

/** A store call refused or abandoned: it timed out, or the store is in its back-off window. */
export class RedisStoreUnavailableError extends Error {
  readonly code = 'ERR_STORE_UNAVAILABLE';
  constructor(message: string, readonly reason: 'timeout' | 'backoff') {
    super(message);
    this.name = 'RedisStoreUnavailableError';
  }
}

type Sender = (command: string[], key: string | undefined, isReadOnly: boolean) => Promise<unknown>;

/** A pin write, kept for one retry when it was skipped by the back-off or timed out. */
interface PinWrite {
  /** The full Redis key (prefix included). */
  key: string;
  value: string;
  /** Epoch ms when `setPin` was called: the pin's write time, also on a retry. */
  at: number;
  ttlMs: number;
}

/** Most pin writes kept for a retry; beyond it the oldest are dropped. */
export const MAX_PENDING_PIN_WRITES = 10_000;
/** Retried pin writes in flight at once when Redis answers again. */
const RETRY_CONCURRENCY = 32;

const STATUSES = new Set<number>([ChannelStatus.Enabled, ChannelStatus.ManuallyDisabled, ChannelStatus.AutoDisabled]);

function invalid(message: string): DistributorError {
  return new DistributorError('ERR_DIST_INVALID_STORE', `RedisStore: ${message}`);
}

/** Ms left of a pin write's TTL (Infinity for a pin without one). */
function ttlLeft(w: PinWrite): number {
  if (!(w.ttlMs > 0 && Number.isFinite(w.ttlMs))) return Infinity;
  return Math.ceil(w.ttlMs - Math.max(0, Date.now() - w.at));
}

/** Escapes Redis glob characters so a prefix or rule name matches literally in SCAN MATCH. */
function globEscape(s: string): string {
  return s.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
}

function toSender(n: RedisScanNode): RedisSendCommand {
  return typeof n === 'function' ? n : (args) => n.sendCommand(args);
}

/**
 * Pins and channel health in Redis, shared by every distributor instance using the same prefix.
 * Every command touches keys of one hash slot, so a Redis Cluster works. See docs/stores.md.
 *
 * @example
 * const client = await createClient({ url }).on('error', console.error).connect();
 * const subscriber = await client.duplicate().on('error', console.error).connect();
 * app.use(distributor({ channels, store: new RedisStore({ client, subscriber }) }));
 */
export class RedisStore implements Store {
  readonly localKeys = false;
  readonly prefix: string;
  readonly timeoutMs: number;
  readonly backoffMs: number;
  readonly failuresBeforeBackoff: number;
  /** Present only when a `subscriber` was given; the distributor then also keeps polling. */
  readonly subscribe?: (listener: (event: StoreEvent) => void) => () => void;

  private readonly send: Sender;
  private readonly scanNodes: () => Promise<RedisSendCommand[]>;
  private readonly channel: string;
  private readonly health: { fail: string; cool: string; status: string; keys: string; marks: string };
  private readonly onError?: (error: Error, operation: string) => void;
  /** Epoch ms until which calls fail fast; 0 while Redis is healthy. */
  private openUntil = 0;
  private probing = false;
  /** Consecutive transport failures and timeouts (reset by any answer from Redis). */
  private failures = 0;
  /** Pin writes owed one retry, by Redis key, oldest first (only the latest write per key). */
  private pending = new Map<string, PinWrite>();
  /** Walks `pending` from its oldest entry (a fresh keys() iterator re-skips every deleted slot). */
  private pendingOldest?: Iterator<string>;
  private retrying = false;
  private retryScheduled = false;
  private listeners = new Set<(event: StoreEvent) => void>();
  private stopSubscription?: () => unknown;

  constructor(options: RedisStoreOptions) {
    if (!options || typeof options !== 'object') throw invalid('options are required ({ client } | { sendCommand } | { sendCommandCluster })');
    const given = (['client', 'sendCommand', 'sendCommandCluster'] as const).filter((k) => options[k] !== undefined && options[k] !== null);
    if (given.length !== 1) {
      throw invalid(`pass exactly one of client, sendCommand or sendCommandCluster (got ${given.length ? given.join(', ') : 'none'})`);
    }
    const prefix = options.prefix ?? 'ecd:';
    if (typeof prefix !== 'string') throw invalid('prefix must be a string');
    this.prefix = prefix;
    this.timeoutMs = positiveNumber(invalid, 'timeoutMs', options.timeoutMs, 200);
    this.backoffMs = nonNegativeNumber(invalid, 'backoffMs', options.backoffMs, 1000);
    this.failuresBeforeBackoff = integerAtLeast(invalid, 'failuresBeforeBackoff', options.failuresBeforeBackoff, 2, 1);
    this.onError = options.onError;

    const { client, sendCommand, sendCommandCluster, masters } = options;
    if (client) {
      if (typeof client.sendCommand !== 'function') throw invalid('client must be a connected node-redis v5+ client (it has no sendCommand)');
      this.send = (command) => client.sendCommand(command);
    } else if (sendCommand) {
      if (typeof sendCommand !== 'function') throw invalid('sendCommand must be a function');
      this.send = (command) => sendCommand(command);
    } else {
      if (typeof sendCommandCluster !== 'function') throw invalid('sendCommandCluster must be a function');
      this.send = (command, key, isReadOnly) => sendCommandCluster({ key, isReadOnly, command });
    }
    if (masters !== undefined && typeof masters !== 'function') throw invalid('masters must be a function returning the master nodes');
    this.scanNodes = masters
      ? async () => [...(await masters())].map(toSender)
      : sendCommandCluster
        ? () => Promise.reject(invalid('clearPins and countPins on a cluster need the masters option (SCAN runs on every master)'))
        : async () => [(command: string[]) => this.send(command, undefined, true)];

    this.channel = `${prefix}events`;
    const h = `${prefix}{health}:`;
    this.health = { fail: `${h}fail`, cool: `${h}cool`, status: `${h}status`, keys: `${h}keys`, marks: `${h}marks` };

    const { subscriber } = options;
    if (subscriber !== undefined && subscriber !== null) {
      if (typeof subscriber !== 'function' && (typeof subscriber !== 'object' || typeof subscriber.subscribe !== 'function')) {
        throw invalid('subscriber must be a node-redis client in subscribe mode or a (channel, onMessage) => unsubscribe function');
      }
      this.subscribe = (listener) => this.addListener(subscriber, listener);
    }
  }

  /** True while calls fail fast (the back-off window after consecutive transport failures). */
  get backingOff(): boolean {
    return this.openUntil !== 0 && Date.now() < this.openUntil;
  }

  /** Pin writes waiting for their one retry (skipped by the back-off or timed out). */
  get pendingPinWrites(): number {
    return this.pending.size;
  }

  // ---- pins (each touches one key) ------------------------------------------------------------

  async getPin(key: string, refreshTtlMs?: number): Promise<string | null> {
    const k = this.prefix + key;
    const reply = await this.guarded('getPin', () =>
      refreshTtlMs !== undefined && refreshTtlMs > 0 && Number.isFinite(refreshTtlMs)
        ? this.evalScript(GET_PIN, [k], [String(Math.ceil(refreshTtlMs))])
        : this.send(['GET', k], k, true));
    return replyPin(reply);
  }

  /**
   * Writes `<value>:<now>` unless the key holds a pin written later. Skipped by the back-off,
   * timed out or lost with the connection, the write is kept (latest per key) and retried once
   * when Redis answers again; it still rejects, so the caller sees the failure. An error reply
   * (OOM, READONLY...) is not retried.
   */
  async setPin(key: string, value: string, ttlMs: number): Promise<void> {
    const write: PinWrite = { key: this.prefix + key, value, at: Date.now(), ttlMs };
    try {
      await this.guarded('setPin', () => this.writePin(write));
    } catch (e) {
      if (!isErrorReply(e)) this.defer(write);
      throw e;
    }
    const owed = this.pending.get(write.key);
    if (owed && owed.at <= write.at) this.pending.delete(write.key);
  }

  /**
   * Add-if-absent (or in place of `replacing`, a stale value): one atomic script, so of N
   * instances reserving one key at once exactly one wins; resolves to null when written, else to
   * the value the key holds.
   */
  async reservePin(key: string, value: string, ttlMs: number, replacing?: string): Promise<string | null> {
    const k = this.prefix + key;
    const reply = await this.guarded('reservePin', () =>
      this.evalScript(RESERVE_PIN, [k], [value, String(Date.now()), String(Math.max(1, Math.ceil(ttlMs))), replacing ?? '']));
    return replyPin(reply);
  }

  async clearPin(key: string, expectedValue: string): Promise<boolean> {
    const k = this.prefix + key;
    // A retry owed to the value being cleared would bring the stale pin back.
    if (this.pending.get(k)?.value === expectedValue) this.pending.delete(k);
    const reply = await this.guarded('clearPin', () => this.evalScript(CLEAR_PIN, [k], [expectedValue]));
    return replyInt(reply) === 1;
  }

  // ---- health (hash-tagged keys, one slot) -----------------------------------------------------

  async recordFailure(channelId: number, policy: CooldownPolicy, now: number): Promise<number | null> {
    const t = Math.floor(now);
    const until = t + Math.ceil(policy.durationMs);
    const event: StoreEvent = { type: 'cooldown', channelId, until };
    const reply = await this.guarded('recordFailure', () => this.evalScript(
      RECORD_FAILURE,
      [this.health.fail, this.health.cool],
      [String(channelId), String(t), String(policy.failures), String(policy.windowMs), String(until), this.channel, JSON.stringify(event)],
    ));
    return replyInt(reply);
  }

  async recordSuccess(channelId: number): Promise<void> {
    await this.guarded('recordSuccess', () => this.send(['HDEL', this.health.fail, String(channelId)], this.health.fail, false));
  }

  async clearCooldown(channelId: number): Promise<void> {
    const event: StoreEvent = { type: 'cooldown', channelId, until: 0 };
    await this.guarded('clearCooldown', () => this.evalScript(
      CLEAR_COOLDOWN, [this.health.fail, this.health.cool], [String(channelId), this.channel, JSON.stringify(event)],
    ));
  }

  async setOverride(channelId: number, patch: { status?: ChannelStatus | null; disabledKeys?: number[] }): Promise<void> {
    const args = [String(channelId), '', '', '', '', this.channel, '', ''];
    if (patch.status !== undefined) {
      args[1] = patch.status === null ? 'del' : 'set';
      args[2] = patch.status === null ? '' : String(patch.status);
      args[6] = JSON.stringify({ type: 'status', channelId, status: patch.status } satisfies StoreEvent);
    }
    if (patch.disabledKeys !== undefined) {
      const list = [...patch.disabledKeys];
      args[3] = list.length ? 'set' : 'del';
      args[4] = list.join(',');
      args[7] = JSON.stringify({ type: 'keys', channelId, disabledKeys: list } satisfies StoreEvent);
    }
    if (!args[1] && !args[3]) return;
    await this.guarded('setOverride', () => this.evalScript(SET_OVERRIDE, [this.health.status, this.health.keys], args));
  }

  async loadHealth(): Promise<HealthSnapshot> {
    const reply = await this.guarded('loadHealth', () =>
      this.evalScript(LOAD_HEALTH, [this.health.cool, this.health.status, this.health.keys, this.health.marks], []));
    const [cool, status, keys, marks] = replyArray(reply);
    const now = Date.now();
    const snap: HealthSnapshot = { cooldowns: {}, statuses: {}, disabledKeys: {}, marks: [] };
    for (const [, v] of replyPairs(marks ?? [])) {
      const e = parseEvent(v);
      if (e?.type === 'mark') {
        const { type: _t, ...mark } = e;
        snap.marks?.push(mark);
      }
    }
    for (const [id, v] of replyPairs(cool)) {
      const until = Number(v);
      if (Number.isFinite(until) && until > now) snap.cooldowns[Number(id)] = until;
    }
    for (const [id, v] of replyPairs(status)) {
      const s = Number(v);
      if (STATUSES.has(s)) snap.statuses[Number(id)] = s as ChannelStatus;
    }
    for (const [id, v] of replyPairs(keys)) {
      const list = v.split(',').filter(Boolean).map(Number).filter(Number.isInteger);
      if (list.length) snap.disabledKeys[Number(id)] = list;
    }
    return snap;
  }

  /** Records an ejection or a cooling key in the `{health}` hash and publishes it. */
  async setMark(mark: HealthMark): Promise<void> {
    const json = JSON.stringify({ type: 'mark', ...mark } satisfies StoreEvent);
    const field = `${mark.kind}:${mark.channelId}:${mark.keyIndex ?? ''}`;
    await this.guarded('setMark', () => this.evalScript(SET_MARK, [this.health.marks], [field, json, this.channel, json]));
  }

  // ---- limits (one channel's keys share a hash tag: one slot, one script) --------------------

  /** One script for every candidate key of a channel: shared by all instances, atomic. */
  async acquireSlot(r: SlotRequest): Promise<SlotReply> {
    const keys: string[] = [];
    for (const k of r.keys) {
      const base = this.prefix + k;
      keys.push(`${base}:c`, `${base}:r`, `${base}:t`);
    }
    const reply = await this.guarded('acquireSlot', () => this.evalScript(ACQUIRE_SLOT, keys, [
      String(Math.floor(r.now)), String(r.rpm), String(r.tpm), String(r.maxConcurrency), String(Math.max(0, Math.floor(r.tokens))),
      r.lease, String(Math.floor(r.now + r.leaseMs)), String(LIMIT_WINDOW_MS), String(CONCURRENCY_RETRY_MS),
    ]));
    const [a, b] = replyArray(reply).map((x) => replyInt(x) ?? -1);
    if (!(a >= 0)) return { index: -1, retryAfterMs: Math.max(1, b) };
    return { index: a, usage: Math.max(0, Math.min(1, b / 1000)) };
  }

  async releaseSlot(key: string, lease: string): Promise<void> {
    const k = `${this.prefix}${key}:c`;
    await this.guarded('releaseSlot', () => this.send(['ZREM', k, lease], k, false));
  }

  async renewSlots(holds: ReadonlyArray<{ key: string; lease: string }>, until: number): Promise<void> {
    const byKey = new Map<string, string[]>();
    for (const h of holds) {
      const k = `${this.prefix}${h.key}:c`;
      let args = byKey.get(k);
      if (!args) byKey.set(k, (args = ['ZADD', k, 'XX']));
      args.push(String(Math.floor(until)), h.lease);
    }
    await Promise.all([...byKey].map(([k, args]) => this.guarded('renewSlots', () => this.send(args, k, false))));
  }

  async addTokens(key: string, at: number, tokens: number): Promise<void> {
    const k = `${this.prefix}${key}:t`;
    await this.guarded('addTokens', () => this.evalScript(ADD_TOKENS, [k], [String(Math.floor(at / 1000)), String(Math.trunc(tokens))]));
  }

  // ---- admin (SCAN every master; never in the request path) -----------------------------------

  /** Deletes the pins whose key starts with `keyPrefix` (every pin when omitted), on every master. */
  async clearPins(keyPrefix = ''): Promise<number> {
    let deleted = 0;
    await this.scanPins(keyPrefix, async (keys, node) => {
      // One DEL per key: keys of one SCAN page may sit in different slots of a cluster node.
      const replies = await this.guarded('clearPins', () => Promise.all(keys.map((k) => node(['DEL', k]))));
      for (const r of replies) deleted += replyInt(r) ?? 0;
    });
    return deleted;
  }

  /** Live pins on every master, counted by `groupOf(key)` (the key as the distributor gave it). */
  async countPins(groupOf: (key: string) => string): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    await this.scanPins('', async (keys) => {
      for (const k of keys) {
        const name = groupOf(k.slice(this.prefix.length));
        out[name] = (out[name] ?? 0) + 1;
      }
    });
    return out;
  }

  /** SCANs the pins under `prefix + keyPrefix`: every key of the store's prefix but its own health keys. */
  private scanPins(keyPrefix: string, onPage: (keys: string[], node: RedisSendCommand) => Promise<void>): Promise<void> {
    const health = `${this.prefix}{health}:`;
    return this.scan(`${globEscape(this.prefix + keyPrefix)}*`, (keys, node) => {
      const pins = keys.filter((k) => !k.startsWith(health));
      return pins.length ? onPage(pins, node) : Promise.resolve();
    });
  }

  /** Ends the subscription this store started; never closes a client you passed in. */
  shutdown(): void {
    this.pending.clear();
    this.pendingOldest = undefined;
    this.listeners.clear();
    this.unsubscribeChannel();
  }

  // ---- internals ------------------------------------------------------------------------------

  /**
   * Runs one store operation under the timeout, failing fast during the back-off window. The
   * window starts after `failuresBeforeBackoff` consecutive transport failures or timeouts; an
   * error reply is an answer (Redis is reachable): it fails that call only and resets the count.
   * After the window one call (the probe) goes to Redis while the others still fail fast; an
   * answer ends the back-off, a failure starts a new window. So an outage costs one timeout per
   * window, and a busy machine's one slow call costs that call only.
   */
  private async guarded<T>(operation: string, call: () => Promise<T>): Promise<T> {
    let probe = false;
    if (this.openUntil !== 0) {
      if (Date.now() < this.openUntil || this.probing) {
        throw new RedisStoreUnavailableError(`RedisStore: ${operation} skipped during the back-off after a Redis failure`, 'backoff');
      }
      this.probing = probe = true;
    }
    try {
      const value = await this.withTimeout(operation, call);
      this.answered(probe);
      return value;
    } catch (e) {
      if (isErrorReply(e)) this.answered(probe);
      else this.unreachable(probe);
      throw e;
    } finally {
      if (probe) this.probing = false;
    }
  }

  /** Redis answered (a reply or an error reply): the failure count restarts, a probe ends the back-off. */
  private answered(probe: boolean): void {
    this.failures = 0;
    if (probe) this.openUntil = 0;
    if (this.pending.size !== 0 && this.openUntil === 0 && !this.retrying && !this.retryScheduled) {
      this.retryScheduled = true;
      setImmediate(() => {
        this.retryScheduled = false;
        this.retryPending();
      });
    }
  }

  /** A transport failure or timeout: the back-off starts at `failuresBeforeBackoff` in a row. */
  private unreachable(probe: boolean): void {
    this.failures++;
    if (this.backoffMs > 0 && this.failures >= this.failuresBeforeBackoff) this.openUntil = Date.now() + this.backoffMs;
    else if (probe) this.openUntil = 0;
  }

  /** The pin write (compare-and-set by write time), with what is left of its TTL. */
  private writePin(w: PinWrite): Promise<unknown> {
    const left = ttlLeft(w);
    return this.evalScript(SET_PIN, [w.key], [w.value, String(w.at), left === Infinity ? '' : String(Math.max(1, left))]);
  }

  /** Keeps a write for its one retry: the latest per key, at most MAX_PENDING_PIN_WRITES (oldest dropped). */
  private defer(w: PinWrite): void {
    const owed = this.pending.get(w.key);
    if (owed && owed.at > w.at) return;
    if (owed) this.pending.delete(w.key);
    this.pending.set(w.key, w);
    while (this.pending.size > MAX_PENDING_PIN_WRITES) {
      let next = this.pendingOldest?.next();
      if (!next || next.done) {
        this.pendingOldest = this.pending.keys();
        next = this.pendingOldest.next();
      }
      if (next.done) break;
      this.pending.delete(next.value);
    }
  }

  /**
   * Sends every owed pin write once (a few at a time). A write the back-off skips again was never
   * sent and stays owed; one that fails or times out again is dropped. Each is a compare-and-set
   * by its original write time, so it never replaces a pin written since.
   */
  private retryPending(): void {
    if (this.retrying || this.pending.size === 0 || this.openUntil !== 0) return;
    this.retrying = true;
    const batch = [...this.pending.values()];
    this.pending = new Map();
    this.pendingOldest = undefined;
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < batch.length) {
        const w = batch[next++];
        if (ttlLeft(w) <= 0) continue; // it expired while it waited: nothing to write
        try {
          await this.guarded('setPin', () => this.writePin(w));
        } catch (e) {
          if (e instanceof RedisStoreUnavailableError && e.reason === 'backoff') this.defer(w);
        }
      }
    };
    void Promise.all(Array.from({ length: Math.min(RETRY_CONCURRENCY, batch.length) }, lane)).finally(() => {
      this.retrying = false;
    });
  }

  private withTimeout<T>(operation: string, call: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new RedisStoreUnavailableError(`RedisStore: ${operation} timed out after ${this.timeoutMs} ms`, 'timeout')),
        this.timeoutMs,
      );
      let p: Promise<T>;
      try {
        p = Promise.resolve(call());
      } catch (e) {
        p = Promise.reject(e);
      }
      // A late reply after the timeout is dropped here (so it is never an unhandled rejection).
      p.then(
        (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        (e: unknown) => {
          clearTimeout(timer);
          reject(e instanceof Error ? e : new Error(errorMessage(e)));
        },
      );
    });
  }

  /**
   * EVALSHA with the locally computed SHA; on NOSCRIPT (a restarted or flushed server, a cluster
   * node that never ran it) EVAL with the source, which runs it and caches it on that node. EVAL
   * is routed by its keys like EVALSHA, so this works through every sender, including an ioredis
   * Cluster's `call` (a keyless SCRIPT LOAD could land on the wrong node).
   */
  private async evalScript(s: LuaScript, keys: string[], args: string[]): Promise<unknown> {
    const route = keys[0];
    const tail = [String(keys.length), ...keys, ...args];
    try {
      return await this.send(['EVALSHA', s.sha, ...tail], route, false);
    } catch (e) {
      if (!isNoScript(e)) throw e;
    }
    return this.send(['EVAL', s.source, ...tail], route, false);
  }

  private async scan(pattern: string, onPage: (keys: string[], node: RedisSendCommand) => Promise<void>): Promise<void> {
    const nodes = await this.scanNodes();
    for (const node of nodes) {
      let cursor = '0';
      do {
        const page = replyScan(await this.guarded('scan', () => node(['SCAN', cursor, 'MATCH', pattern, 'COUNT', '1000'])));
        cursor = page.cursor;
        if (page.keys.length) await onPage(page.keys, node);
      } while (cursor !== '0');
    }
  }

  private addListener(subscriber: RedisPubSubClient | RedisSubscribeFunction, listener: (event: StoreEvent) => void): () => void {
    this.listeners.add(listener);
    if (!this.stopSubscription) this.subscribeChannel(subscriber);
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.unsubscribeChannel();
    };
  }

  private subscribeChannel(subscriber: RedisPubSubClient | RedisSubscribeFunction): void {
    const onMessage = (message: string | Buffer) => this.dispatch(message);
    if (typeof subscriber === 'function') {
      const stop = subscriber(this.channel, onMessage);
      this.stopSubscription = () => this.background('unsubscribe', () => stop());
      return;
    }
    const listener: RedisMessageListener = (message) => onMessage(message);
    this.background('subscribe', () => subscriber.subscribe(this.channel, listener));
    this.stopSubscription = () => this.background('unsubscribe', () => subscriber.unsubscribe(this.channel, listener));
  }

  private unsubscribeChannel(): void {
    const stop = this.stopSubscription;
    this.stopSubscription = undefined;
    stop?.();
  }

  /** Runs a call whose failure only matters to `onError` (the polling backstop covers it). */
  private background(operation: string, call: () => unknown): void {
    const report = (e: unknown) => this.onError?.(e instanceof Error ? e : new Error(errorMessage(e)), operation);
    try {
      const r = call();
      if (r && typeof (r as Promise<unknown>).then === 'function') (r as Promise<unknown>).then(undefined, report);
    } catch (e) {
      report(e);
    }
  }

  private dispatch(message: string | Buffer): void {
    const event = parseEvent(message);
    if (!event) return;
    for (const l of [...this.listeners]) {
      try {
        l(event);
      } catch (e) {
        this.onError?.(e instanceof Error ? e : new Error(errorMessage(e)), 'listener');
      }
    }
  }
}

/** A published event, validated (messages on the channel are not trusted blindly). */
export function parseEvent(message: unknown): StoreEvent | null {
  let text: string | null;
  try {
    text = replyText(message);
  } catch {
    return null;
  }
  if (text === null) return null;
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return null;
  }
  if (!v || typeof v !== 'object') return null;
  const e = v as Record<string, unknown>;
  const channelId = e.channelId;
  if (typeof channelId !== 'number' || !Number.isInteger(channelId)) return null;
  switch (e.type) {
    case 'cooldown':
      return typeof e.until === 'number' && Number.isFinite(e.until) ? { type: 'cooldown', channelId, until: e.until } : null;
    case 'status':
      if (e.status === null) return { type: 'status', channelId, status: null };
      return typeof e.status === 'number' && STATUSES.has(e.status) ? { type: 'status', channelId, status: e.status as ChannelStatus } : null;
    case 'keys':
      return Array.isArray(e.disabledKeys) && e.disabledKeys.every((k) => Number.isInteger(k))
        ? { type: 'keys', channelId, disabledKeys: e.disabledKeys as number[] }
        : null;
    case 'mark': {
      if ((e.kind !== 'eject' && e.kind !== 'key') || typeof e.until !== 'number' || !Number.isFinite(e.until)) return null;
      const mark: StoreEvent = { type: 'mark', kind: e.kind, channelId, until: e.until };
      if (e.kind === 'key') {
        if (typeof e.keyIndex !== 'number' || !Number.isInteger(e.keyIndex) || e.keyIndex < 0) return null;
        mark.keyIndex = e.keyIndex;
      }
      if (typeof e.count === 'number' && Number.isInteger(e.count) && e.count > 0) mark.count = e.count;
      return mark;
    }
    default:
      return null;
  }
}
