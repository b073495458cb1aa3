// Public types of express-channel-distributor, and the res.locals augmentation that makes
// `res.locals.channel` and `res.locals.distribution` typed for every consumer.
import type { Request } from 'express';

/** Channel status, as in new-api: only `Enabled` is routable. */
export enum ChannelStatus {
  Enabled = 1,
  ManuallyDisabled = 2,
  AutoDisabled = 3,
}

/** One upstream channel (a provider endpoint plus one or more API keys). */
export interface ChannelInput {
  /** Positive integer, unique within a registry. */
  id: number;
  name?: string;
  /** Default `ChannelStatus.Enabled` (1). */
  status?: ChannelStatus;
  /** `"default,vip"` or `['default', 'vip']`; entries are trimmed. Default `'default'`. */
  group?: string | string[];
  /** `"gpt-4o,gpt-4o-mini"` or an array; entries are trimmed. */
  models: string | string[];
  /** Higher is preferred. Default 0. */
  priority?: number;
  /** Relative weight inside a priority tier, >= 0. Default 0. */
  weight?: number;
  baseUrl?: string;
  /** One key, or several (a multi-key channel). */
  key?: string | string[];
  /** Indexes of `key` that are switched off (multi-key channels). */
  disabledKeys?: number[];
  /** How a multi-key channel picks its key. Default `'random'`. */
  multiKeyMode?: 'random' | 'polling';
  /** May health rules auto-disable this channel? Default true. */
  autoBan?: boolean;
  /**
   * The upstream protocol, which sets how `relay()` authenticates: `'openai'` (default,
   * `authorization: Bearer <key>`), `'azure'` (`api-key`, deployment paths), `'anthropic'`
   * (`x-api-key` plus `anthropic-version`), `'gemini'` (`x-goog-api-key`).
   */
  type?: ChannelType;
  /** Azure channels: the `api-version` query parameter. Default `'2024-10-21'`. */
  apiVersion?: string;
  /**
   * Requested model -> upstream model (an object, or the reference's `model_mapping` JSON string).
   * `relay()` sends the mapped name; selection and pins use the requested one.
   */
  modelMapping?: Record<string, string> | string;
  /**
   * Limits per key (a one-key channel: the channel), counted in the store (RedisStore: shared by
   * every instance). A key at a limit is not used; a channel with no key under its limits is skipped.
   */
  limits?: ChannelLimits;
  /** Any other field is kept and passed through to `res.locals.channel`. */
  [extra: string]: unknown;
}

/** How `relay()` talks to a channel's upstream (API.md 11.5). */
export type ChannelType = 'openai' | 'azure' | 'anthropic' | 'gemini';

/** Per-key limits of a channel (API.md 11.4). Every field is off unless given. */
export interface ChannelLimits {
  /** Requests per key in any 60 s window. */
  rpm?: number;
  /** Tokens per key in any 60 s window (reported usage; body bytes / 4 until the report arrives). */
  tpm?: number;
  /** Requests in flight per key. */
  maxConcurrency?: number;
}

/**
 * The normalised, read-only view of a chosen channel, found at `res.locals.channel`.
 * `key` is the one key chosen for this request.
 */
export interface Channel {
  readonly id: number;
  readonly name: string;
  readonly status: ChannelStatus;
  readonly groups: readonly string[];
  readonly models: readonly string[];
  readonly priority: number;
  readonly weight: number;
  readonly baseUrl?: string;
  readonly key?: string;
  readonly keyIndex?: number;
  readonly multiKeyMode: 'random' | 'polling';
  readonly autoBan: boolean;
  /** `'openai'` unless the channel says otherwise. */
  readonly type: ChannelType;
  /** Azure channels: the `api-version` given (relay() defaults it to 2024-10-21). */
  readonly apiVersion?: string;
  /** Requested model -> upstream model, parsed (a JSON string becomes an object). */
  readonly modelMapping?: Readonly<Record<string, string>>;
  readonly limits?: Readonly<ChannelLimits>;
  readonly [extra: string]: unknown;
}

/** What the auth middleware tells the distributor about the caller (default: `res.locals.token`). */
export interface RequestContext {
  /** The using group. Default `'default'`; `'auto'` walks `autoGroups`. */
  group?: string;
  /** Filters `autoGroups` through `options.usableGroups(userGroup)`. */
  userGroup?: string;
  /** Used for logs and to scope affinity keys. */
  tokenId?: string | number;
  userId?: string | number;
  /** When an array: the model must be in it, else 403 `model_not_allowed`. */
  modelLimits?: string[] | null;
  /** Admin pin: that channel only; no affinity, no fallback, no retry. */
  specificChannelId?: number;
  /** With group `auto`: retries may move on to the next auto group. */
  crossGroupRetry?: boolean;
  [extra: string]: unknown;
}

export type KeySource =
  | { type: 'header'; key: string }
  | { type: 'body'; path: string; nestedPath?: string }
  | { type: 'query'; key: string }
  | { type: 'context'; key: string };

/** One affinity rule. Every boolean defaults to false. */
export interface AffinityRule {
  name: string;
  /** At least one must match the model (unanchored; write `^...$` to anchor). */
  modelRegex: string[];
  /** If given, one must match the request path. */
  pathRegex?: string[];
  /** If given, the User-Agent must contain one entry (case-insensitive). */
  userAgentInclude?: string[];
  /** Ordered; the first source that yields a non-empty value wins. */
  keySources: KeySource[];
  /** If set, the value must match, else the next rule is tried. */
  valueRegex?: string;
  /** Pin lifetime; `<= 0` means `defaultTtlSeconds`. */
  ttlSeconds?: number;
  /** Stop upstream retries after a failure, but only when the pin was actually used. */
  skipRetryOnFailure?: boolean;
  /**
   * Warn (`WRN_DIST_AFFINITY_NO_VALUE`, once) when this rule's pinned requests show a cached/input
   * token ratio below this after `evaluateAfter` usage reports on hits: the upstream does not
   * cache for these sessions, so affinity costs spread and buys nothing. Off unless given (0-1).
   */
  minCachedRatio?: number;
  /** Usage reports on hits before `minCachedRatio` is judged. Default 500. */
  evaluateAfter?: number;
  includeUsingGroup?: boolean;
  includeModelName?: boolean;
  includeRuleName?: boolean;
}

export interface AffinityOptions {
  /** Default true. */
  enabled?: boolean;
  /** Default: the reference's `codex cli trace` and `claude cli trace` rules. */
  rules?: AffinityRule[];
  /** Default true: the pin moves to the channel that served. */
  switchOnSuccess?: boolean;
  /** Default false: a stale pin is kept instead of cleared (every stale reason). */
  keepOnChannelDisabled?: boolean;
  /** Default true: a pinned channel that failed with a retryable status loses the pin. */
  clearOnFailure?: boolean;
  /** Default 3600. */
  defaultTtlSeconds?: number;
  /**
   * Default true: on a multi-key channel the pin records the key too, a hit uses the same key,
   * and a key that is disabled or cooling moves the pin to another key of the same channel.
   */
  keyLevel?: boolean;
  /**
   * Default true: on a miss the chosen channel (and key) is reserved under the pin key before
   * `next()` (add-if-absent), so concurrent first requests of one session use one channel.
   */
  coalesce?: boolean;
  /** How long a reservation lives until a success turns it into a pin (ms). Default 30,000. */
  reserveTtlMs?: number;
}

export interface RetryOptions {
  /** Upstream retries per request. Default 2 (at most 3 upstream attempts). */
  times?: number;
  /** Retryable statuses: `'429,500-503'` or numbers. Default: all but 2xx, 400, 408, 504, 524. */
  statusCodes?: string | Array<number | string>;
  /** `'restart'` (default): highest tier with an untried channel; `'descend'`: one tier down per attempt. */
  tierStrategy?: 'restart' | 'descend';
  /** Envoy-style budget: retries in flight may not exceed max(minConcurrent, percent% of active requests). Off by default. */
  budget?: { percent?: number; minConcurrent?: number };
  /** Wait for a Retry-After on the only candidate left when it is at most this long. Default 0 (off). */
  maxRetryAfterMs?: number;
  /**
   * Default true: a 429 or 401 from one key of a multi-key channel cools that key (for the
   * Retry-After, else `health.cooldown.durationMs`, else 30 s) and the retry uses another enabled
   * key of the same channel before another channel. It counts as an attempt; `tried` holds the
   * channel once.
   */
  rotateKey?: boolean;
}

/** How a channel is chosen inside the priority tier (API.md 11.4). */
export type SelectionStrategy = 'weighted' | 'least-busy' | 'lowest-latency' | 'least-usage';

export interface SelectionOptions {
  /**
   * `'weighted'` (default): random by weight. `'least-busy'`: fewest requests in flight on this
   * instance, weight breaking ties. `'lowest-latency'`: the lowest latency average, within
   * `latency.buffer` of the best picked by weight. `'least-usage'`: the lowest used share of its
   * `limits` (channels without limits count as unused). Tiers, pins and exclusions are unchanged.
   */
  strategy?: SelectionStrategy;
  latency?: {
    /** Samples after which an old sample weighs half. Default 50. */
    halfLife?: number;
    /** Channels within this fraction of the best average are picked by weight. Default 0.1. */
    buffer?: number;
    /** Samples a channel needs before its average counts. Default 3. */
    minSamples?: number;
    /** Share of picks that go to channels with fewer than `minSamples` samples. Default 0.05. */
    explore?: number;
  };
  /**
   * When every candidate is at a limit: wait up to `queueMs` (FIFO) for a slot, else answer 429
   * `channels_saturated` with `Retry-After`. `queueMs` default 0 (no wait), `maxQueued` default 1000.
   */
  overflow?: { queueMs?: number; maxQueued?: number };
}

export interface HealthOptions {
  /** `{}` means 3 failures within 60 s -> 30 s cooldown. Off unless given. */
  cooldown?: { failures?: number; windowMs?: number; durationMs?: number };
  /**
   * `{}` means status 401 and the reference's keywords. Off unless given. `statusCodes` may list
   * only 401 and 403. A keyword counts only when it does not occur in the caller's own request
   * (body, path, query, header values; case-insensitive), so an upstream echoing a caller's input
   * never disables a channel.
   */
  autoDisable?: { statusCodes?: number[]; keywords?: string[] };
  /**
   * Also count statuses seen only when the response finishes (5xx and 429 only; no auto-disable),
   * for relays that report nothing through `retry()` / `fail()`. Default false: only failures
   * reported as the upstream's count, since a status at `finish` may be the gateway's own answer.
   */
  countUnreported?: boolean;
  /**
   * Re-enables auto-disabled channels (status 3, never a manual 2) whose `check` resolves true,
   * every `intervalMs` (default 60_000). Off unless given; without it, re-enable with
   * `registry.setStatus(id, ChannelStatus.Enabled)`.
   */
  probe?: { intervalMs?: number; check: (channel: Channel) => boolean | Promise<boolean> };
  /**
   * Outlier ejection (Envoy-style; off unless given, `{}` for the defaults): a channel whose
   * counted failures / upstream attempts over `windowMs` (30,000) reach `failureRate` (0.5) with at
   * least `minRequests` (20) attempts is ejected for `baseEjectionMs` (30,000) x its consecutive
   * ejections, at most `maxEjectionMs` (300,000); never more than `maxEjectionPercent` (50) of
   * the channels serving a group and model at once. Shared through the store like cooldowns.
   */
  outlier?: {
    failureRate?: number;
    minRequests?: number;
    windowMs?: number;
    baseEjectionMs?: number;
    maxEjectionMs?: number;
    maxEjectionPercent?: number;
  };
}

/** A winston-compatible logger; `console` fits too. */
export interface Logger {
  error(message: string, meta?: Record<string, unknown>): unknown;
  warn(message: string, meta?: Record<string, unknown>): unknown;
  info?(message: string, meta?: Record<string, unknown>): unknown;
  debug?(message: string, meta?: Record<string, unknown>): unknown;
}

/**
 * Why a pin was not used. `saturated`: the pinned channel is at its `limits`; its pin is kept.
 * `ejected`: outlier ejection (`health.outlier`).
 */
export type StaleReason = 'missing' | 'disabled' | 'ineligible' | 'cooling' | 'ejected' | 'setup_failed' | 'saturated';

export type StopReason = 'times' | 'status' | 'specific_channel' | 'skip_rule' | 'no_channel' | 'budget';

export interface AffinityInfo {
  rule: string;
  /** A pin was found for the key. */
  hit: boolean;
  /** The pinned channel served (or is serving) this request. */
  used: boolean;
  stale?: StaleReason;
  cleared: boolean;
  /** The key index the pin recorded (multi-key channels with `affinity.keyLevel`). */
  keyIndex?: number;
}

/** Token usage of one upstream answer, as a relay reports it (`distribution.reportUsage()`). */
export interface UsageReport {
  inputTokens?: number;
  outputTokens?: number;
  /** Input tokens served from the provider's prompt cache. */
  cachedTokens?: number;
  /** Input tokens written to the provider's prompt cache (Anthropic `cache_creation_input_tokens`). */
  cacheWriteTokens?: number;
}

export interface Attempt {
  channelId: number;
  phase: 'setup' | 'upstream';
  status?: number;
  reason?: string;
}

export interface RetryFailure {
  /** Upstream HTTP status; absent for connection errors and timeouts (retryable). */
  status?: number;
  error?: unknown;
  /** Upstream Retry-After, in ms. */
  retryAfterMs?: number;
}

/** `res.locals.distribution`: what the distributor decided, and the relay's retry call. */
export interface Distribution {
  selected: boolean;
  model: string;
  group: string;
  selectedGroup: string;
  affinity?: AffinityInfo;
  /** Channel ids in attempt order (setup failures included). */
  tried: number[];
  attempts: Attempt[];
  stopReason?: StopReason;
  /** A short, secret-free decision trace such as `affinity:hit ch=3 -> upstream 429 -> retry ch=5`. */
  trace: string[];
  /**
   * Report an upstream failure of the current channel. Resolves to the next channel (also set
   * as `res.locals.channel`) or null when no further attempt is allowed (`stopReason` says why).
   */
  retry(failure?: RetryFailure): Promise<Channel | null>;
  /**
   * Reports a failure of the current channel that must not be retried (a stream cut after the
   * response was committed): the attempt, health and pin clearing are recorded, nothing is picked.
   */
  fail(failure?: RetryFailure): Promise<void>;
  /**
   * Reports the token usage of the answer that served (`relay()` does it itself from JSON and SSE
   * answers). Feeds the `usage` hook, `distributor_tokens_total` and `affinityReport()`. Once per
   * request: later calls are ignored; counts outside 0..1e9 count as 0.
   */
  reportUsage(usage: UsageReport): void;
  /**
   * Reports how long the current channel took for this request (`selection.strategy:
   * 'lowest-latency'` learns from it): time to first byte for a stream (`firstByte: true`), total
   * time otherwise. `relay()` does it itself. Values outside 0..10 min are ignored.
   */
  reportLatency(ms: number, opts?: { firstByte?: boolean }): void;
  /**
   * Aborted when the client's connection closes before the response finished (also when it
   * closed while the distributor was still reading the body or the store). `relay()` checks it
   * before every upstream call and aborts the upstream request when it fires; pass it to your
   * own HTTP client (`fetch(url, { signal })`).
   */
  readonly signal: AbortSignal;
}

export interface ExtractedRequest {
  model?: string;
  group?: string;
}

/** Hooks observe decisions; a throwing hook is logged and never breaks a request. */
export interface DistributorHooks {
  /** `elapsedMs`: time since the distributor started on this request (for retries it includes the upstream time). */
  select?(e: { req: Request; channel: Channel; group: string; model: string; reason: 'affinity' | 'select' | 'specific' | 'fallback' | 'retry' | 'hedge'; elapsedMs?: number }): void;
  affinityHit?(e: { req: Request; rule: string; channelId: number; fingerprint: string }): void;
  affinityMiss?(e: { req: Request; rule: string; fingerprint: string }): void;
  affinityStale?(e: { req: Request; rule: string; channelId: number; reason: StaleReason; cleared: boolean }): void;
  fallback?(e: { req: Request; channelId: number; error: string }): void;
  retry?(e: { req: Request; from: number; to: number; status?: number; attempt: number }): void;
  exhausted?(e: { req: Request; reason: StopReason; tried: number[]; status?: number }): void;
  storeError?(e: { operation: string; error: Error }): void;
  /** Each usage report: the channel and key that served, the rule, and whether the pin was used. */
  usage?(e: { req: Request; channelId: number; keyIndex?: number; rule?: string; affinity: 'hit' | 'miss' | 'none'; usage: UsageReport }): void;
  /**
   * Health changes seen by this instance: a cooldown, an auto-disable (channel or key), a probe's
   * re-enable, an outlier ejection (`ejected`, with `until`), a key cooled by `retry.rotateKey`
   * (`key_cooldown`, with `keyIndex` and `until`).
   */
  health?(e: { channelId: number; event: 'cooldown' | 'auto_disabled' | 'key_disabled' | 're_enabled' | 'ejected' | 'key_cooldown'; until?: number; keyIndex?: number }): void;
  /** A request found every candidate at its limits: `queued` (it waits) or `rejected` (429). */
  saturated?(e: { req: Request; outcome: 'queued' | 'rejected'; retryAfterMs: number }): void;
}

/** Names of the creation-time checks, for `validate: { name: false }` (codes in `VALIDATION_CODES`). */
export type ValidationName =
  | 'unknownOption'
  | 'memoryStoreInProduction'
  | 'memoryStoreInCluster'
  | 'sharedStore'
  | 'affinityTtlBelowCooldown'
  | 'zeroWeightTier'
  | 'creationStack'
  | 'emptyChannels'
  | 'ruleNeverMatches'
  | 'unsafeRegex'
  | 'affinityNoValue'
  /** `channelsFromNewApi()`: a channel type number without a native relay (imported as `'openai'`). */
  | 'channelType'
  /** `channelsFromNewApi()`: a `model_mapping` or Azure `other` (api version) that cannot be imported (dropped). */
  | 'channelField';

/** A channel's health as this instance sees it (`handler.health(id)`, the admin helpers). */
export interface ChannelHealth {
  id: number;
  status: ChannelStatus;
  coolingDown: boolean;
  /** Epoch ms the cooldown ends; null when not cooling down. */
  cooldownUntil: number | null;
  /** Disabled key indexes of a multi-key channel. */
  disabledKeys: number[];
  /** Epoch ms an outlier ejection ends (`health.outlier`); null when not ejected. */
  ejectedUntil: number | null;
  /** Key index -> epoch ms its cooldown ends (`retry.rotateKey`), for keys cooling now. */
  coolingKeys: Record<number, number>;
  /** Requests in flight on this channel on this instance. */
  inFlight: number;
  /** Latency average per model (ms) and its sample count, as `lowest-latency` sees it. */
  latency: Record<string, { avgMs: number; samples: number }>;
}

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Locals {
      /** The channel chosen by express-channel-distributor for this request. */
      channel?: Channel;
      /** The distributor's decision and the relay's `retry()` call. */
      distribution?: Distribution;
    }
    interface Request {
      /** The raw request body, kept by express-channel-distributor when it read the body. */
      rawBody?: Buffer;
    }
  }
}
