// Public options -> the resolved configuration, once, with defaults and fail-fast checks.
import type { NextFunction, Request, Response } from 'express';
import { compileRules, defaultAffinityRules, type CompiledRule } from './affinity/rules';
import { ChannelRegistry } from './channels/registry';
import { booleanOption, integerAtLeast, isPlainObject, nonNegativeNumber, positiveNumber } from './check';
import { configError, type DistributorError } from './errors';
import { createDefaultLogger } from './logging/logger';
import { parseBytes } from './request/body';
import { DEFAULT_RETRY_STATUS, parseStatusRanges } from './retry/status-ranges';
import { MemoryStore } from './stores/memory';
import type { Store } from './stores/store';
import type {
  AffinityOptions, Channel, ChannelInput, DistributorHooks, ExtractedRequest, HealthOptions, Logger, RequestContext, RetryOptions,
  SelectionOptions, SelectionStrategy, ValidationName,
} from './types';
import type { TierStrategy } from './selection/select';

export type ErrorHandler = (err: DistributorError, req: Request, res: Response, next: NextFunction) => void;

export interface DistributorOptions {
  /** The channels: a `ChannelRegistry` or a plain array (wrapped in one). */
  channels: ChannelRegistry | ChannelInput[];
  /** Where pins and channel health live. Default: a new `MemoryStore`. */
  store?: Store;
  /** Reads the caller's context. Default: `res.locals.token`. */
  context?: (req: Request, res: Response) => RequestContext | undefined | Promise<RequestContext | undefined>;
  /** Replaces the built-in model/group extraction (body reading still happens first). */
  extractModel?: (req: Request) => string | ExtractedRequest | undefined | Promise<string | ExtractedRequest | undefined>;
  /** Return false to skip selection (task-fetch routes). */
  shouldSelect?: (req: Request) => boolean;
  /** Honour a body `group` (it must be the caller's group or one of `usableGroups(userGroup)`). Default false. */
  allowBodyGroup?: boolean;
  /** Groups a user group may use. Default: no filter. */
  usableGroups?: (userGroup: string | undefined) => string[];
  /** Groups the `auto` group walks, in order. Default `['default']`. */
  autoGroups?: string[];
  /** Largest body the distributor reads itself: bytes or `'20mb'`. Default 20 MB. */
  bodyLimit?: number | string;
  /** Buffer multipart bodies to read their `model` field. Default false. */
  multipart?: boolean;
  /** Prepares a chosen channel (may be async); a throw makes the distributor fall back. */
  setup?: (channel: Channel, req: Request, res: Response) => void | Promise<void>;
  affinity?: AffinityOptions;
  retry?: RetryOptions;
  health?: HealthOptions;
  /** How a channel is chosen inside its priority tier, and what happens when all are at their limits. */
  selection?: SelectionOptions;
  /** Random source in [0, 1). Default `Math.random`. */
  random?: () => number;
  /** Winston-compatible logger. Default: a winston logger at level `warn`. */
  logger?: Logger;
  on?: DistributorHooks;
  /** Takes over error responses. */
  onError?: ErrorHandler;
  /** Add an `x-distributor-trace` response header with the decision trace. Default false. */
  traceHeader?: boolean;
  /** Switch validations off (`false`) or one by name (`{ memoryStoreInProduction: false }`). Default: all on. */
  validate?: boolean | { [K in ValidationName]?: boolean };
  /** How often (ms) health and status are re-read from a shared store as a backstop. Default 1000. */
  syncIntervalMs?: number;
}


/** The reference's default auto-disable keywords (matched case-insensitively). */
export const DEFAULT_DISABLE_KEYWORDS = [
  'Your credit balance is too low',
  'This organization has been disabled.',
  'You exceeded your current quota',
  'Permission denied',
  'The security token included in the request is invalid',
  'Operation not allowed',
  'Your account is not authorized',
];

export interface Config {
  registry: ChannelRegistry;
  store: Store;
  ownsStore: boolean;
  context: (req: Request, res: Response) => RequestContext | undefined | Promise<RequestContext | undefined>;
  extractModel?: (req: Request) => string | ExtractedRequest | undefined | Promise<string | ExtractedRequest | undefined>;
  shouldSelect?: (req: Request) => boolean;
  allowBodyGroup: boolean;
  usableGroups?: (userGroup: string | undefined) => string[];
  autoGroups: string[];
  bodyLimit: number;
  multipart: boolean;
  setup?: DistributorOptions['setup'];
  affinity: {
    enabled: boolean;
    rules: CompiledRule[];
    switchOnSuccess: boolean;
    keepOnChannelDisabled: boolean;
    clearOnFailure: boolean;
    defaultTtlMs: number;
    keyLevel: boolean;
    coalesce: boolean;
    reserveTtlMs: number;
  };
  retry: {
    times: number;
    statusTable: Uint8Array;
    tierStrategy: TierStrategy;
    budget?: { percent: number; minConcurrent: number };
    maxRetryAfterMs: number;
    rotateKey: boolean;
  };
  selection: {
    strategy: SelectionStrategy;
    latency: { halfLife: number; buffer: number; minSamples: number; explore: number };
    overflow: { queueMs: number; maxQueued: number };
  };
  health: {
    cooldown?: { failures: number; windowMs: number; durationMs: number };
    autoDisable?: { statusCodes: Set<number>; keywords: string[] };
    probe?: { intervalMs: number; check: (channel: import('./types').Channel) => boolean | Promise<boolean> };
    countUnreported: boolean;
    outlier?: {
      failureRate: number; minRequests: number; windowMs: number; baseEjectionMs: number; maxEjectionMs: number; maxEjectionPercent: number;
    };
  };
  random: () => number;
  logger: Logger;
  on: DistributorHooks;
  onError?: ErrorHandler;
  traceHeader: boolean;
  syncIntervalMs: number;
}

/** Every option name, kept in sync with the type by the compiler (a missing key fails the build). */
export const KNOWN_OPTIONS: { [K in keyof Required<DistributorOptions>]: true } = {
  channels: true, store: true, context: true, extractModel: true, shouldSelect: true, allowBodyGroup: true,
  usableGroups: true, autoGroups: true, bodyLimit: true, multipart: true, setup: true, affinity: true,
  retry: true, health: true, selection: true, random: true, logger: true, on: true, onError: true, traceHeader: true,
  validate: true, syncIntervalMs: true,
};

function fn<T>(name: string, v: T | undefined): T | undefined {
  if (v !== undefined && typeof v !== 'function') throw configError(`${name} must be a function`);
  return v;
}

function isStore(s: unknown): s is Store {
  if (!s || typeof s !== 'object') return false;
  const o = s as Record<string, unknown>;
  return ['getPin', 'setPin', 'clearPin', 'recordFailure', 'setOverride', 'loadHealth'].every((m) => typeof o[m] === 'function');
}

function defaultContext(_req: Request, res: Response): RequestContext | undefined {
  const t = (res.locals as Record<string, unknown>).token;
  return t && typeof t === 'object' ? (t as RequestContext) : undefined;
}

const STRATEGIES: readonly SelectionStrategy[] = ['weighted', 'least-busy', 'lowest-latency', 'least-usage'];

/** A number in [0, 1], or `def` when undefined. */
function fraction(name: string, v: unknown, def: number): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1) throw configError(`${name} must be a number from 0 to 1`);
  return v;
}

function objectOption(name: string, v: unknown): Record<string, unknown> {
  if (v === undefined) return {};
  if (!isPlainObject(v)) throw configError(`${name} must be an object`);
  return v;
}

function resolveSelection(raw: SelectionOptions | undefined): Config['selection'] {
  const o = objectOption('options.selection', raw);
  const strategy = o.strategy ?? 'weighted';
  if (!STRATEGIES.includes(strategy as SelectionStrategy)) throw configError(`selection.strategy must be one of ${STRATEGIES.map((x) => `'${x}'`).join(', ')}`);
  const lat = objectOption('selection.latency', o.latency);
  const over = objectOption('selection.overflow', o.overflow);
  return {
    strategy: strategy as SelectionStrategy,
    latency: {
      halfLife: positiveNumber(configError, 'selection.latency.halfLife', lat.halfLife, 50),
      buffer: nonNegativeNumber(configError, 'selection.latency.buffer', lat.buffer, 0.1),
      minSamples: integerAtLeast(configError, 'selection.latency.minSamples', lat.minSamples, 3, 1),
      explore: fraction('selection.latency.explore', lat.explore, 0.05),
    },
    overflow: {
      // bounded so a typo cannot hold requests (and their sockets) for hours
      queueMs: Math.min(integerAtLeast(configError, 'selection.overflow.queueMs', over.queueMs, 0, 0), 600_000),
      maxQueued: integerAtLeast(configError, 'selection.overflow.maxQueued', over.maxQueued, 1000, 0),
    },
  };
}

function resolveOutlier(raw: HealthOptions['outlier']): Config['health']['outlier'] {
  if (raw === undefined) return undefined;
  const o = objectOption('health.outlier', raw);
  const baseEjectionMs = positiveNumber(configError, 'health.outlier.baseEjectionMs', o.baseEjectionMs, 30_000);
  const maxEjectionMs = positiveNumber(configError, 'health.outlier.maxEjectionMs', o.maxEjectionMs, 300_000);
  if (maxEjectionMs < baseEjectionMs) throw configError('health.outlier.maxEjectionMs must be >= baseEjectionMs');
  const failureRate = fraction('health.outlier.failureRate', o.failureRate, 0.5);
  if (failureRate === 0) throw configError('health.outlier.failureRate must be > 0 (0 would eject every channel)');
  const maxEjectionPercent = nonNegativeNumber(configError, 'health.outlier.maxEjectionPercent', o.maxEjectionPercent, 50);
  if (maxEjectionPercent > 100) throw configError('health.outlier.maxEjectionPercent must be from 0 to 100');
  return {
    failureRate,
    minRequests: integerAtLeast(configError, 'health.outlier.minRequests', o.minRequests, 20, 1),
    windowMs: positiveNumber(configError, 'health.outlier.windowMs', o.windowMs, 30_000),
    baseEjectionMs,
    maxEjectionMs,
    maxEjectionPercent,
  };
}

/** Resolves options into a Config. Throws `ERR_DIST_INVALID_OPTIONS` / `ERR_DIST_INVALID_CHANNEL`. */
export function resolveOptions(options: DistributorOptions): Config {
  if (!options || typeof options !== 'object') throw configError('distributor() needs an options object with channels');
  const o = options;
  if (o.channels === undefined) throw configError('options.channels is required (an array or a ChannelRegistry)');
  const registry = o.channels instanceof ChannelRegistry ? o.channels : new ChannelRegistry(o.channels);
  if (o.store !== undefined && !isStore(o.store)) {
    throw configError('options.store must implement getPin, setPin, clearPin, recordFailure, setOverride and loadHealth');
  }
  let bodyLimit: number;
  try {
    bodyLimit = parseBytes(o.bodyLimit ?? '20mb');
  } catch (e) {
    throw configError(`options.bodyLimit: ${(e as Error).message}`);
  }
  if (o.autoGroups !== undefined && (!Array.isArray(o.autoGroups) || o.autoGroups.some((g) => typeof g !== 'string' || !g))) {
    throw configError('options.autoGroups must be an array of group names');
  }
  const aff = o.affinity ?? {};
  if (typeof aff !== 'object') throw configError('options.affinity must be an object');
  const defaultTtlSeconds = positiveNumber(configError, 'affinity.defaultTtlSeconds', aff.defaultTtlSeconds, 3600);
  const retry = o.retry ?? {};
  if (typeof retry !== 'object') throw configError('options.retry must be an object');
  if (retry.tierStrategy !== undefined && retry.tierStrategy !== 'restart' && retry.tierStrategy !== 'descend') {
    throw configError("retry.tierStrategy must be 'restart' or 'descend'");
  }
  let budget: Config['retry']['budget'];
  if (retry.budget !== undefined) {
    if (!retry.budget || typeof retry.budget !== 'object') throw configError('retry.budget must be an object');
    budget = {
      percent: positiveNumber(configError, 'retry.budget.percent', retry.budget.percent, 20),
      minConcurrent: integerAtLeast(configError, 'retry.budget.minConcurrent', retry.budget.minConcurrent, 3, 0),
    };
  }
  const health = o.health ?? {};
  if (typeof health !== 'object') throw configError('options.health must be an object');
  let cooldown: Config['health']['cooldown'];
  if (health.cooldown !== undefined) {
    if (!health.cooldown || typeof health.cooldown !== 'object') throw configError('health.cooldown must be an object');
    cooldown = {
      failures: positiveNumber(configError, 'health.cooldown.failures', health.cooldown.failures, 3),
      windowMs: positiveNumber(configError, 'health.cooldown.windowMs', health.cooldown.windowMs, 60_000),
      durationMs: positiveNumber(configError, 'health.cooldown.durationMs', health.cooldown.durationMs, 30_000),
    };
  }
  let autoDisable: Config['health']['autoDisable'];
  if (health.autoDisable !== undefined) {
    const ad = health.autoDisable;
    if (!ad || typeof ad !== 'object') throw configError('health.autoDisable must be an object');
    if (ad.statusCodes !== undefined && (!Array.isArray(ad.statusCodes) || ad.statusCodes.some((s) => !Number.isInteger(s)))) {
      throw configError('health.autoDisable.statusCodes must be an array of statuses');
    }
    // Any other status can be caused by the caller (400, 404, 413, 422...) or is a passing
    // condition that cooldown handles (429, 5xx): switching a channel off for it would let one
    // caller take a channel away from everyone.
    const refused = (ad.statusCodes ?? []).filter((s) => s !== 401 && s !== 403);
    if (refused.length) {
      throw configError(`health.autoDisable.statusCodes may only list 401 and 403 (got ${refused.join(', ')}); use health.cooldown for other statuses`);
    }
    if (ad.keywords !== undefined && (!Array.isArray(ad.keywords) || ad.keywords.some((s) => typeof s !== 'string'))) {
      throw configError('health.autoDisable.keywords must be an array of strings');
    }
    autoDisable = {
      statusCodes: new Set(ad.statusCodes ?? [401]),
      keywords: (ad.keywords ?? DEFAULT_DISABLE_KEYWORDS).map((k) => k.toLowerCase()).filter((k) => k),
    };
  }
  let probe: Config['health']['probe'];
  if (health.probe !== undefined) {
    if (!health.probe || typeof health.probe !== 'object' || typeof health.probe.check !== 'function') {
      throw configError('health.probe must be { check(channel) => boolean | Promise<boolean>, intervalMs? }');
    }
    probe = { intervalMs: positiveNumber(configError, 'health.probe.intervalMs', health.probe.intervalMs, 60_000), check: health.probe.check };
  }
  const outlier = resolveOutlier(health.outlier);
  const selection = resolveSelection(o.selection);
  const logger = o.logger ?? createDefaultLogger();
  if (typeof logger.warn !== 'function' || typeof logger.error !== 'function') throw configError('options.logger must have warn() and error()');
  if (o.on !== undefined && (typeof o.on !== 'object' || o.on === null)) throw configError('options.on must be an object of hooks');
  for (const [k, v] of Object.entries(o.on ?? {})) if (typeof v !== 'function') throw configError(`options.on.${k} must be a function`);
  const store = o.store ?? new MemoryStore();
  return {
    registry,
    store,
    ownsStore: o.store === undefined,
    context: fn('options.context', o.context) ?? defaultContext,
    extractModel: fn('options.extractModel', o.extractModel),
    shouldSelect: fn('options.shouldSelect', o.shouldSelect),
    allowBodyGroup: booleanOption(configError, 'options.allowBodyGroup', o.allowBodyGroup, false),
    usableGroups: fn('options.usableGroups', o.usableGroups),
    autoGroups: o.autoGroups ? [...o.autoGroups] : ['default'],
    bodyLimit,
    multipart: booleanOption(configError, 'options.multipart', o.multipart, false),
    setup: fn('options.setup', o.setup),
    affinity: {
      enabled: booleanOption(configError, 'affinity.enabled', aff.enabled, true),
      rules: compileRules(aff.rules ?? defaultAffinityRules(), defaultTtlSeconds),
      switchOnSuccess: booleanOption(configError, 'affinity.switchOnSuccess', aff.switchOnSuccess, true),
      keepOnChannelDisabled: booleanOption(configError, 'affinity.keepOnChannelDisabled', aff.keepOnChannelDisabled, false),
      clearOnFailure: booleanOption(configError, 'affinity.clearOnFailure', aff.clearOnFailure, true),
      defaultTtlMs: defaultTtlSeconds * 1000,
      keyLevel: booleanOption(configError, 'affinity.keyLevel', aff.keyLevel, true),
      coalesce: booleanOption(configError, 'affinity.coalesce', aff.coalesce, true),
      reserveTtlMs: positiveNumber(configError, 'affinity.reserveTtlMs', aff.reserveTtlMs, 30_000),
    },
    retry: {
      times: integerAtLeast(configError, 'retry.times', retry.times, 2, 0),
      statusTable: parseStatusRanges(retry.statusCodes ?? DEFAULT_RETRY_STATUS),
      tierStrategy: retry.tierStrategy ?? 'restart',
      budget,
      maxRetryAfterMs: integerAtLeast(configError, 'retry.maxRetryAfterMs', retry.maxRetryAfterMs, 0, 0),
      rotateKey: booleanOption(configError, 'retry.rotateKey', retry.rotateKey, true),
    },
    selection,
    health: { cooldown, autoDisable, probe, countUnreported: booleanOption(configError, 'health.countUnreported', health.countUnreported, false), outlier },
    random: fn('options.random', o.random) ?? Math.random,
    logger,
    on: o.on ?? {},
    onError: fn('options.onError', o.onError),
    traceHeader: booleanOption(configError, 'options.traceHeader', o.traceHeader, false),
    syncIntervalMs: positiveNumber(configError, 'options.syncIntervalMs', o.syncIntervalMs, 1000),
  };
}
