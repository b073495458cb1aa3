// Once-only misconfiguration warnings (express-rate-limit style): each has a code, can be
// switched off by name, runs once, and never breaks a request.
import type { Config } from './options';
import { KNOWN_OPTIONS } from './options';
import type { DistributorOptions } from './types';

export const WARNING_CODES = {
  unknownOption: 'WRN_DIST_UNKNOWN_OPTION',
  memoryStoreInProduction: 'WRN_DIST_MEMORY_STORE_IN_PRODUCTION',
  emptyChannels: 'WRN_DIST_NO_CHANNELS',
  ruleNeverMatches: 'WRN_DIST_RULE_NEVER_MATCHES',
} as const;

export type ValidationName = keyof typeof WARNING_CODES;

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

/** Suggests the closest known option name for a typo. */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
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

/** Runs the creation-time checks; warnings go to the logger with their code. */
export function runValidations(cfg: Config, options: DistributorOptions): void {
  const v = options.validate;
  if (v === false) return;
  const enabled = (name: ValidationName) => !(v && typeof v === 'object' && v[name] === false);
  const warn = (name: ValidationName, message: string) => {
    if (!enabled(name)) return;
    try {
      cfg.logger.warn(`${WARNING_CODES[name]}: ${message}`, { code: WARNING_CODES[name] });
    } catch {
      /* a logger failure never breaks the factory */
    }
  };
  const known = Object.keys(KNOWN_OPTIONS);
  for (const k of Object.keys(options)) {
    if (!known.includes(k)) {
      const hint = didYouMean(k, known);
      warn('unknownOption', `unknown option "${k}"${hint ? `; did you mean "${hint}"?` : ''}`);
    }
  }
  if (cfg.store.localKeys && process.env.NODE_ENV === 'production') {
    warn('memoryStoreInProduction', 'the memory store keeps pins and health per process; use RedisStore when several instances run');
  }
  if (cfg.registry.size === 0) warn('emptyChannels', 'the channel list is empty; every request will get 503 until channels are added');
  for (const r of cfg.affinity.rules) {
    if (r.neverMatches) warn('ruleNeverMatches', `affinity rule "${r.name}" can never match (no model pattern or no key source)`);
  }
}
