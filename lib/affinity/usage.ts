// Usage and cache accounting: does affinity pay? Per rule, how many lookups found a pin that
// served (hits), and the cached/input token ratio of the answers on hits and on misses. A rule
// whose hits cache no better than `minCachedRatio` after `evaluateAfter` reports is reported once
// (WRN_DIST_AFFINITY_NO_VALUE): the upstream does not keep a cache for those sessions.
import type { CompiledRule } from './rules';
import type { UsageReport } from '../types';

/** Whether the request that reported usage was served through its pin. */
export type AffinityLabel = 'hit' | 'miss' | 'none';

interface Tokens {
  reports: number;
  input: number;
  cached: number;
  output: number;
  cacheWrite: number;
}

interface RuleStats {
  lookups: number;
  hits: number;
  hit: Tokens;
  miss: Tokens;
  warned: boolean;
}

/** One rule's line of `distributorAdmin(handler).affinityReport()`. */
export interface AffinityRuleReport {
  /** Requests whose key was looked up. */
  lookups: number;
  /** Lookups whose pin served the request. */
  hits: number;
  /** hits / lookups (0 without lookups). */
  hitRate: number;
  /** Usage reports and tokens on hits and on misses. */
  onHits: { reports: number; inputTokens: number; cachedTokens: number; cachedRatio: number | null };
  onMisses: { reports: number; inputTokens: number; cachedTokens: number; cachedRatio: number | null };
}

const emptyTokens = (): Tokens => ({ reports: 0, input: 0, cached: 0, output: 0, cacheWrite: 0 });

/** Above this a count is not a real answer's (reports and the relay's parser share the bound). */
export const MAX_TOKEN_COUNT = 1e9;

/** A usable token count: a finite number from 0 to 1e9 (floored), else undefined. */
export function tokenValue(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0 && v <= MAX_TOKEN_COUNT ? Math.floor(v) : undefined;
}

/** A token count from a report: a usable count, else 0 (garbage never counts). */
function tokenCount(v: unknown): number {
  return tokenValue(v) ?? 0;
}

/** The usage as numbers only (every field a count >= 0; absent fields stay absent). */
export function cleanUsage(u: UsageReport | undefined): UsageReport | undefined {
  if (!u || typeof u !== 'object') return undefined;
  const out: UsageReport = {};
  if (u.inputTokens !== undefined) out.inputTokens = tokenCount(u.inputTokens);
  if (u.outputTokens !== undefined) out.outputTokens = tokenCount(u.outputTokens);
  if (u.cachedTokens !== undefined) out.cachedTokens = tokenCount(u.cachedTokens);
  if (u.cacheWriteTokens !== undefined) out.cacheWriteTokens = tokenCount(u.cacheWriteTokens);
  return out;
}

export class UsageBook {
  private readonly rules = new Map<string, RuleStats>();

  constructor(private readonly warn: (rule: CompiledRule, ratio: number, reports: number) => void) {}

  private stats(rule: string): RuleStats {
    let s = this.rules.get(rule);
    if (!s) this.rules.set(rule, (s = { lookups: 0, hits: 0, hit: emptyTokens(), miss: emptyTokens(), warned: false }));
    return s;
  }

  /** A key was looked up; `served` when its pin served the request. */
  lookup(rule: string, served: boolean): void {
    const s = this.stats(rule);
    s.lookups++;
    if (served) s.hits++;
  }

  /** An answer's usage, for a request whose rule matched (`rule` undefined: no rule, not counted per rule). */
  usage(rule: CompiledRule | undefined, label: AffinityLabel, u: UsageReport): void {
    if (!rule || label === 'none') return;
    const s = this.stats(rule.name);
    const t = label === 'hit' ? s.hit : s.miss;
    t.reports++;
    t.input += u.inputTokens ?? 0;
    t.cached += u.cachedTokens ?? 0;
    t.output += u.outputTokens ?? 0;
    t.cacheWrite += u.cacheWriteTokens ?? 0;
    if (label === 'hit' && !s.warned && rule.minCachedRatio !== undefined && t.reports >= rule.evaluateAfter && t.input > 0) {
      const ratio = t.cached / t.input;
      if (ratio < rule.minCachedRatio) {
        s.warned = true;
        this.warn(rule, ratio, t.reports);
      }
    }
  }

  report(): Record<string, AffinityRuleReport> {
    const out: Record<string, AffinityRuleReport> = {};
    const side = (t: Tokens) => ({ reports: t.reports, inputTokens: t.input, cachedTokens: t.cached, cachedRatio: t.input > 0 ? t.cached / t.input : null });
    for (const [name, s] of this.rules) {
      out[name] = { lookups: s.lookups, hits: s.hits, hitRate: s.lookups ? s.hits / s.lookups : 0, onHits: side(s.hit), onMisses: side(s.miss) };
    }
    return out;
  }
}
