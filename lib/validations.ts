// Once-only misconfiguration warnings (express-rate-limit style): each has a code, can be
// switched off by name, runs once per process and subject, and never breaks a request.
import { isPlainObject } from './check';
import cluster from 'node:cluster';
import type { ChannelRegistry } from './channels/registry';
import { KNOWN_OPTIONS, type Config, type DistributorOptions } from './options';
import type { Store } from './stores/store';
import type { AffinityOptions, AffinityRule, HealthOptions, Logger, RetryOptions, SelectionOptions, ValidationName } from './types';
import { ChannelStatus } from './types';

/**
 * Every check and its code. `WRN_DIST_*` are logged with `logger.warn`, `ERR_DIST_*` with
 * `logger.error`; both carry `{ code, validation }` in the meta object.
 */
export const VALIDATION_CODES = {
  unknownOption: 'WRN_DIST_UNKNOWN_OPTION',
  memoryStoreInProduction: 'WRN_DIST_MEMORY_STORE_IN_PRODUCTION',
  memoryStoreInCluster: 'WRN_DIST_MEMORY_STORE_IN_CLUSTER',
  sharedStore: 'WRN_DIST_STORE_SHARED',
  affinityTtlBelowCooldown: 'WRN_DIST_TTL_BELOW_COOLDOWN',
  zeroWeightTier: 'WRN_DIST_ZERO_WEIGHT_TIER',
  creationStack: 'ERR_DIST_CREATED_IN_REQUEST_HANDLER',
  emptyChannels: 'WRN_DIST_NO_CHANNELS',
  ruleNeverMatches: 'WRN_DIST_RULE_NEVER_MATCHES',
  unsafeRegex: 'WRN_DIST_UNSAFE_REGEX',
  affinityNoValue: 'WRN_DIST_AFFINITY_NO_VALUE',
  channelType: 'WRN_DIST_CHANNEL_TYPE',
  channelField: 'WRN_DIST_CHANNEL_FIELD',
} as const satisfies { [K in ValidationName]: `${'WRN' | 'ERR'}_DIST_${string}` };

export type ValidationCode = (typeof VALIDATION_CODES)[ValidationName];

// Known nested option names, kept in sync with the types by the compiler (a missing key fails the build).
type KeysOf<T> = { [K in keyof Required<T>]: true };
const AFFINITY_KEYS: KeysOf<AffinityOptions> = {
  enabled: true, rules: true, switchOnSuccess: true, keepOnChannelDisabled: true, clearOnFailure: true, defaultTtlSeconds: true,
  keyLevel: true, coalesce: true, reserveTtlMs: true,
};
const RULE_KEYS: KeysOf<AffinityRule> = {
  name: true, modelRegex: true, pathRegex: true, userAgentInclude: true, keySources: true, valueRegex: true, ttlSeconds: true,
  skipRetryOnFailure: true, includeUsingGroup: true, includeModelName: true, includeRuleName: true, minCachedRatio: true, evaluateAfter: true,
};
const RETRY_KEYS: KeysOf<RetryOptions> = { times: true, statusCodes: true, tierStrategy: true, budget: true, maxRetryAfterMs: true, rotateKey: true };
const BUDGET_KEYS: KeysOf<NonNullable<RetryOptions['budget']>> = { percent: true, minConcurrent: true };
const HEALTH_KEYS: KeysOf<HealthOptions> = { cooldown: true, autoDisable: true, probe: true, countUnreported: true, outlier: true };
const OUTLIER_KEYS: KeysOf<NonNullable<HealthOptions['outlier']>> = {
  failureRate: true, minRequests: true, windowMs: true, baseEjectionMs: true, maxEjectionMs: true, maxEjectionPercent: true,
};
const SELECTION_KEYS: KeysOf<SelectionOptions> = { strategy: true, latency: true, overflow: true };
const LATENCY_KEYS: KeysOf<NonNullable<SelectionOptions['latency']>> = { halfLife: true, buffer: true, minSamples: true, explore: true };
const OVERFLOW_KEYS: KeysOf<NonNullable<SelectionOptions['overflow']>> = { queueMs: true, maxQueued: true };
const COOLDOWN_KEYS: KeysOf<NonNullable<HealthOptions['cooldown']>> = { failures: true, windowMs: true, durationMs: true };
const AUTO_DISABLE_KEYS: KeysOf<NonNullable<HealthOptions['autoDisable']>> = { statusCodes: true, keywords: true };

/** Check name + subject pairs that already ran in this process. */
const done = new Set<string>();

/** Stores used by live distributors, with the registry each one routes (for `sharedStore`). */
const storeUsers = new WeakMap<Store, Map<ChannelRegistry, number>>();

/**
 * Logs a finding found outside a distributor (the new-api import, `channelsFromNewApi()`) once per
 * process, name and subject, with its code; a throwing logger is ignored.
 */
export function warnOnce(logger: Logger, name: ValidationName, subject: string, message: string): void {
  const id = `${name}\u0000${subject}`;
  if (done.has(id)) return;
  done.add(id);
  const code = VALIDATION_CODES[name];
  try {
    const log = code.startsWith('ERR_') ? logger.error : logger.warn;
    log.call(logger, `${code}: ${message}`, { code, validation: name });
  } catch {
    /* a logger failure never breaks an import */
  }
}

/** @internal Forgets which checks ran (tests only). */
export function resetValidations(): void {
  done.clear();
}

function levenshtein(a: string, b: string): number {
  const dp = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) dp[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      dp[i][j] = Math.min(dp[i - 1][j] + 1, dp[i][j - 1] + 1, dp[i - 1][j - 1] + (a[i - 1].toLowerCase() === b[j - 1].toLowerCase() ? 0 : 1));
    }
  }
  return dp[a.length][b.length];
}

/** Suggests the closest known option name for a typo (or the one a truncated name starts). */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
  const lower = name.toLowerCase();
  const prefixed = lower.length >= 4 ? known.filter((k) => k.toLowerCase().startsWith(lower)) : [];
  if (prefixed.length === 1) return prefixed[0];
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = levenshtein(name, k);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

type Warn = (name: ValidationName, subject: string, message: string) => void;

function unknownKeys(warn: Warn, path: string, value: unknown, known: object): void {
  if (!isPlainObject(value)) return;
  const names = Object.keys(known);
  for (const k of Object.keys(value)) {
    if (names.includes(k)) continue;
    const hint = didYouMean(k, names);
    const full = path ? `${path}.${k}` : k;
    warn('unknownOption', full, `unknown option "${full}"${hint ? `; did you mean "${path ? `${path}.` : ''}${hint}"?` : ''}`);
  }
}

function checkUnknownOptions(warn: Warn, o: DistributorOptions): void {
  unknownKeys(warn, '', o, KNOWN_OPTIONS);
  unknownKeys(warn, 'affinity', o.affinity, AFFINITY_KEYS);
  if (isPlainObject(o.affinity) && Array.isArray(o.affinity.rules)) {
    o.affinity.rules.forEach((r, i) => unknownKeys(warn, `affinity.rules[${i}]`, r, RULE_KEYS));
  }
  unknownKeys(warn, 'retry', o.retry, RETRY_KEYS);
  if (isPlainObject(o.retry)) unknownKeys(warn, 'retry.budget', o.retry.budget, BUDGET_KEYS);
  unknownKeys(warn, 'health', o.health, HEALTH_KEYS);
  if (isPlainObject(o.health)) {
    unknownKeys(warn, 'health.cooldown', o.health.cooldown, COOLDOWN_KEYS);
    unknownKeys(warn, 'health.autoDisable', o.health.autoDisable, AUTO_DISABLE_KEYS);
    unknownKeys(warn, 'health.outlier', o.health.outlier, OUTLIER_KEYS);
  }
  unknownKeys(warn, 'selection', o.selection, SELECTION_KEYS);
  if (isPlainObject(o.selection)) {
    unknownKeys(warn, 'selection.latency', o.selection.latency, LATENCY_KEYS);
    unknownKeys(warn, 'selection.overflow', o.selection.overflow, OVERFLOW_KEYS);
  }
  unknownKeys(warn, 'validate', o.validate, VALIDATION_CODES);
}

/** A PM2 instance or a node:cluster worker: one of several processes serving the same app. */
function inCluster(): boolean {
  return cluster.isWorker === true || process.env.NODE_APP_INSTANCE !== undefined || process.env.pm_id !== undefined;
}

/** What makes a channel "the same channel" across two registries (compared, never logged). */
function channelSignature(registry: ChannelRegistry, id: number): string {
  const ch = registry.get(id);
  if (!ch) return '';
  return JSON.stringify([ch.name, ch.input.baseUrl ?? null, [...ch.models].sort(), [...ch.groups].sort(), ch.keys]);
}

/**
 * Two distributors may share a store on purpose (same channels: shared pins and health). The
 * store keys pins and health by channel id only, so it goes wrong when the same id means a
 * different channel in the two registries: a pin or a cooldown of one would steer the other.
 */
function checkSharedStore(warn: Warn, cfg: Config): void {
  const users = storeUsers.get(cfg.store);
  if (!users) return;
  for (const other of users.keys()) {
    if (other === cfg.registry) continue;
    const clashes: number[] = [];
    for (const ch of cfg.registry.list()) {
      if (other.get(ch.id) && channelSignature(other, ch.id) !== channelSignature(cfg.registry, ch.id)) clashes.push(ch.id);
    }
    if (clashes.length === 0) continue;
    const shown = clashes.slice(0, 5).join(', ') + (clashes.length > 5 ? `, and ${clashes.length - 5} more` : '');
    warn('sharedStore', `${cfg.store.prefix}|${clashes.join(',')}`,
      `one store (prefix "${cfg.store.prefix}") is used by two distributors whose channel ids ${shown} name different channels; ` +
      'pins and health are keyed by channel id, so they would leak between them. Give each distributor its own store (or another prefix), or the same ChannelRegistry');
  }
}

function checkTtlBelowCooldown(warn: Warn, cfg: Config): void {
  const cooldown = cfg.health.cooldown;
  if (!cooldown || !cfg.affinity.enabled) return;
  for (const r of cfg.affinity.rules) {
    if (r.ttlMs >= cooldown.durationMs) continue;
    warn('affinityTtlBelowCooldown', r.name,
      `affinity rule "${r.name}" keeps pins for ${r.ttlMs} ms, less than the ${cooldown.durationMs} ms cooldown ` +
      '(health.cooldown.durationMs): a pin to a cooling channel expires before the channel is back, so its sessions always move');
  }
}

/** Per (group, model): one priority tier with every weight 0 next to a tier that uses weights. */
function checkZeroWeightTiers(warn: Warn, registry: ChannelRegistry): void {
  const pairs = new Set<string>();
  for (const ch of registry.list()) {
    if (ch.status !== ChannelStatus.Enabled) continue;
    for (const g of ch.groups) for (const m of ch.models) pairs.add(JSON.stringify([g, m]));
  }
  const found: string[] = [];
  for (const p of pairs) {
    const [g, m] = JSON.parse(p) as [string, string];
    const tiers = registry.tiers(g, m) ?? [];
    const zero = tiers.filter((t) => t.totalWeight === 0);
    if (zero.length === 0 || zero.length === tiers.length) continue;
    found.push(`${g}/${m} (priority ${zero.map((t) => t.priority).join(', ')})`);
  }
  if (found.length === 0) return;
  const shown = found.slice(0, 5).join('; ') + (found.length > 5 ? `; and ${found.length - 5} more` : '');
  warn('zeroWeightTier', found.join(';'),
    `priority tiers with every weight 0 next to tiers that use weights: ${shown}. A tier of weight-0 channels picks them with equal chances; set weights there too if that is not intended`);
}

function checkRules(warn: Warn, cfg: Config, userRules: boolean): void {
  if (!cfg.affinity.enabled) return;
  const models = new Set<string>();
  for (const ch of cfg.registry.list()) for (const m of ch.models) models.add(m);
  for (const r of cfg.affinity.rules) {
    if (r.neverMatches) {
      warn('ruleNeverMatches', r.name, `affinity rule "${r.name}" can never match (no model pattern, no key source, or an empty user-agent list)`);
    } else if (userRules && models.size > 0 && ![...models].some((m) => r.modelRegex.some((re) => re.test(m)))) {
      warn('ruleNeverMatches', `${r.name}|models`, `affinity rule "${r.name}" matches none of the ${models.size} registered models`);
    }
  }
}

/**
 * A quantified group that itself contains a quantifier (`(a+)+`, `(.*x)*`, `(\w+\s?)*`) can
 * backtrack exponentially. Values are bounded to 1,024 characters before matching, which caps the
 * damage of a linear pattern but not of these: flag them at creation.
 */
const NESTED_QUANTIFIER = /\((?:[^()\\]|\\.)*[+*](?:[^()\\]|\\.)*\)(?:[+*]|\{\d+,\d*\})/;

function checkUnsafeRegex(warn: Warn, cfg: Config): void {
  for (const r of cfg.affinity.rules) {
    const patterns = [...r.modelRegex, ...(r.pathRegex ?? []), ...(r.valueRegex ? [r.valueRegex] : [])];
    for (const re of patterns) {
      if (NESTED_QUANTIFIER.test(re.source)) {
        warn('unsafeRegex', `${r.name}|${re.source}`, `affinity rule "${r.name}": pattern ${JSON.stringify(re.source)} nests quantifiers and may backtrack exponentially on hostile input; rewrite it without a quantified group that contains a quantifier`);
      }
    }
  }
}

/** Created inside a request handler? (The stack holds the router's per-request layer call.) */
function insideRequestHandler(): boolean {
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 100;
  try {
    const stack = new Error().stack ?? '';
    return stack.includes('Layer.handle [as handle_request]') || stack.includes('Layer.handleRequest');
  } finally {
    Error.stackTraceLimit = limit;
  }
}

/**
 * Runs the creation-time checks; each warning goes to the logger once per process with its code.
 * Returns the release function the distributor calls on `shutdown()`.
 */
/** What runValidations() hands the distributor: the release for `shutdown()` and the runtime warner. */
export interface Validations {
  release(): void;
  /** Logs a check found while serving (once per name and subject), unless switched off. */
  warn(name: ValidationName, subject: string, message: string): void;
}

export function runValidations(cfg: Config, options: DistributorOptions): Validations {
  const v = options.validate;
  const enabled = (name: ValidationName) => v !== false && !(isPlainObject(v) && v[name] === false);
  const warn: Warn = (name, subject, message) => {
    if (!enabled(name)) return;
    const id = `${name}\u0000${subject}`;
    if (done.has(id)) return;
    done.add(id);
    const code = VALIDATION_CODES[name];
    try {
      const log = code.startsWith('ERR_') ? cfg.logger.error : cfg.logger.warn;
      log.call(cfg.logger, `${code}: ${message}`, { code, validation: name });
    } catch {
      /* a logger failure never breaks the factory */
    }
  };
  const check = (name: ValidationName, fn: () => void) => {
    if (!enabled(name)) return;
    try {
      fn();
    } catch {
      /* a failing check is a bug in the check, never the user's problem */
    }
  };

  check('unknownOption', () => checkUnknownOptions(warn, options));
  check('creationStack', () => {
    if (insideRequestHandler()) {
      warn('creationStack', '',
        'distributor() was called inside a request handler: create it once at startup and reuse it, or every request gets a new, empty store and registry');
    }
  });
  const memory = cfg.store.localKeys;
  check('memoryStoreInProduction', () => {
    if (memory && process.env.NODE_ENV === 'production') {
      warn('memoryStoreInProduction', '', 'the memory store keeps pins and health per process; use RedisStore when several instances run');
    }
  });
  check('memoryStoreInCluster', () => {
    if (memory && inCluster()) {
      warn('memoryStoreInCluster', '', 'this process is a cluster or PM2 worker, and the memory store does not share pins and health with the other workers; use RedisStore');
    }
  });
  check('sharedStore', () => checkSharedStore(warn, cfg));
  check('emptyChannels', () => {
    if (cfg.registry.size === 0) warn('emptyChannels', '', 'the channel list is empty; every request will get 503 until channels are added');
  });
  check('zeroWeightTier', () => checkZeroWeightTiers(warn, cfg.registry));
  check('affinityTtlBelowCooldown', () => checkTtlBelowCooldown(warn, cfg));
  check('ruleNeverMatches', () => checkRules(warn, cfg, isPlainObject(options.affinity) && options.affinity.rules !== undefined));
  check('unsafeRegex', () => checkUnsafeRegex(warn, cfg));

  // Registrations that outlive the factory: the store's users, and re-checks on registry reloads.
  let users = storeUsers.get(cfg.store);
  if (!users) storeUsers.set(cfg.store, (users = new Map()));
  users.set(cfg.registry, (users.get(cfg.registry) ?? 0) + 1);
  const unwatch = enabled('zeroWeightTier')
    ? cfg.registry.onChange((change) => {
      if (change.type === 'reload' || change.type === 'upsert') check('zeroWeightTier', () => checkZeroWeightTiers(warn, cfg.registry));
    })
    : () => undefined;
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    const n = users.get(cfg.registry) ?? 0;
    if (n <= 1) users.delete(cfg.registry);
    else users.set(cfg.registry, n - 1);
    unwatch();
  };
  return { release, warn };
}
