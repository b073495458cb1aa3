// Affinity rules: the defaults, compilation once at creation (regexes, paths), and the
// import of new-api's `channel_affinity_setting` JSON.
import { DistributorError, configError } from '../errors';
import { compilePath } from '../request/json-path';
import { pinKeyPrefix } from './layout';
import type { AffinityOptions, AffinityRule, KeySource } from '../types';

export type CompiledSource =
  | { type: 'header'; key: string }
  | { type: 'body'; path: string[]; nested?: string[] }
  | { type: 'query'; key: string }
  | { type: 'context'; key: string };

export interface CompiledRule {
  name: string;
  modelRegex: RegExp[];
  pathRegex?: RegExp[];
  userAgentInclude?: string[];
  sources: CompiledSource[];
  valueRegex?: RegExp;
  ttlMs: number;
  skipRetryOnFailure: boolean;
  includeUsingGroup: boolean;
  includeModelName: boolean;
  includeRuleName: boolean;
  /** A rule that can never match (empty model list, no key source). Reported by validations. */
  neverMatches: boolean;
  /** `aff:<rule part>:`, the start of every pin key this rule derives (computed once). */
  keyPrefix: string;
  /** Warn when hits cache less than this share of their input (undefined: never judged). */
  minCachedRatio?: number;
  /** Usage reports on hits before `minCachedRatio` is judged. */
  evaluateAfter: number;
}

/** The reference's two default rules (`codex cli trace`, `claude cli trace`). */
export function defaultAffinityRules(): AffinityRule[] {
  return [
    {
      name: 'codex cli trace',
      modelRegex: ['^gpt-.*$'],
      pathRegex: ['/v1/responses'],
      keySources: [{ type: 'body', path: 'prompt_cache_key' }],
      skipRetryOnFailure: true,
      includeUsingGroup: true,
      includeRuleName: true,
    },
    {
      name: 'claude cli trace',
      modelRegex: ['^claude-.*$', '^gpt-.*$'],
      pathRegex: ['/v1/messages'],
      keySources: [
        { type: 'header', key: 'X-Claude-Code-Session-Id' },
        { type: 'body', path: 'metadata.user_id', nestedPath: 'session_id' },
      ],
      skipRetryOnFailure: true,
      includeUsingGroup: true,
      includeRuleName: true,
    },
  ];
}

function compileRegex(rule: string, pattern: unknown, flags = ''): RegExp {
  if (typeof pattern !== 'string') throw configError(`affinity rule "${rule}": pattern must be a string`);
  let src = pattern;
  let f = flags;
  if (src.startsWith('(?i)')) {
    src = src.slice(4);
    if (!f.includes('i')) f += 'i';
  }
  try {
    return new RegExp(src, f);
  } catch (e) {
    throw configError(`affinity rule "${rule}": invalid regex ${JSON.stringify(pattern)} (${(e as Error).message})`);
  }
}

function compileSource(rule: string, s: KeySource): CompiledSource {
  if (!s || typeof s !== 'object') throw configError(`affinity rule "${rule}": a key source must be an object`);
  switch (s.type) {
    case 'header':
    case 'query':
    case 'context':
      if (typeof s.key !== 'string' || !s.key) throw configError(`affinity rule "${rule}": ${s.type} source needs a key`);
      return { type: s.type, key: s.type === 'header' ? s.key.toLowerCase() : s.key };
    case 'body':
      if (typeof s.path !== 'string' || !s.path) throw configError(`affinity rule "${rule}": body source needs a path`);
      if (s.nestedPath !== undefined && typeof s.nestedPath !== 'string') throw configError(`affinity rule "${rule}": nestedPath must be a string`);
      return { type: 'body', path: compilePath(s.path), nested: s.nestedPath ? compilePath(s.nestedPath) : undefined };
    default:
      throw configError(`affinity rule "${rule}": unknown key source type ${JSON.stringify((s as { type?: unknown }).type)}`);
  }
}

function strList(rule: string, field: string, v: unknown): string[] | undefined {
  if (v === undefined || v === null) return undefined;
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw configError(`affinity rule "${rule}": ${field} must be an array of strings`);
  return v as string[];
}

/** Compiles every rule once; throws `ERR_DIST_INVALID_OPTIONS` naming the rule on any invalid part. */
export function compileRules(rules: AffinityRule[], defaultTtlSeconds: number): CompiledRule[] {
  if (!Array.isArray(rules)) throw configError('affinity.rules must be an array');
  return rules.map((r, i) => {
    if (!r || typeof r !== 'object') throw configError(`affinity rule #${i} must be an object`);
    const name = typeof r.name === 'string' && r.name ? r.name : (() => { throw configError(`affinity rule #${i} needs a name`); })();
    const models = strList(name, 'modelRegex', r.modelRegex) ?? [];
    const paths = strList(name, 'pathRegex', r.pathRegex);
    const uas = strList(name, 'userAgentInclude', r.userAgentInclude);
    if (!Array.isArray(r.keySources)) throw configError(`affinity rule "${name}": keySources must be an array`);
    if (r.ttlSeconds !== undefined && (typeof r.ttlSeconds !== 'number' || !Number.isFinite(r.ttlSeconds))) {
      throw configError(`affinity rule "${name}": ttlSeconds must be a number`);
    }
    const modelRegex = models.filter((p) => p.trim() !== '').map((p) => compileRegex(name, p));
    const pathRegex = paths?.filter((p) => p.trim() !== '').map((p) => compileRegex(name, p));
    const userAgentInclude = uas?.map((u) => u.trim().toLowerCase()).filter((u) => u !== '');
    const sources = r.keySources.map((s) => compileSource(name, s));
    const ttl = r.ttlSeconds && r.ttlSeconds > 0 ? r.ttlSeconds : defaultTtlSeconds;
    if (r.minCachedRatio !== undefined && (typeof r.minCachedRatio !== 'number' || !(r.minCachedRatio >= 0 && r.minCachedRatio <= 1))) {
      throw configError(`affinity rule "${name}": minCachedRatio must be a number from 0 to 1`);
    }
    if (r.evaluateAfter !== undefined && (typeof r.evaluateAfter !== 'number' || !Number.isSafeInteger(r.evaluateAfter) || r.evaluateAfter < 1)) {
      throw configError(`affinity rule "${name}": evaluateAfter must be an integer >= 1`);
    }
    return {
      name,
      modelRegex,
      pathRegex: pathRegex && pathRegex.length ? pathRegex : undefined,
      userAgentInclude: userAgentInclude && userAgentInclude.length ? userAgentInclude : undefined,
      sources,
      valueRegex: r.valueRegex ? compileRegex(name, r.valueRegex) : undefined,
      ttlMs: Math.round(ttl * 1000),
      skipRetryOnFailure: r.skipRetryOnFailure === true,
      includeUsingGroup: r.includeUsingGroup === true,
      includeModelName: r.includeModelName === true,
      includeRuleName: r.includeRuleName === true,
      neverMatches: modelRegex.length === 0 || sources.length === 0 || (userAgentInclude !== undefined && userAgentInclude.length === 0 && (uas?.length ?? 0) > 0),
      keyPrefix: pinKeyPrefix({ name, includeRuleName: r.includeRuleName === true }),
      minCachedRatio: r.minCachedRatio,
      evaluateAfter: r.evaluateAfter ?? 500,
    };
  });
}

// ---- new-api import ----------------------------------------------------------------------

interface NewApiKeySource {
  type?: string;
  key?: string;
  path?: string;
  nested_path?: string;
}
interface NewApiRule {
  name?: string;
  model_regex?: string[];
  path_regex?: string[];
  user_agent_include?: string[];
  key_sources?: NewApiKeySource[];
  value_regex?: string;
  ttl_seconds?: number;
  skip_retry_on_failure?: boolean;
  include_using_group?: boolean;
  include_model_name?: boolean;
  include_rule_name?: boolean;
}
/** new-api's `channel_affinity_setting` option value. */
export interface NewApiAffinitySetting {
  enabled?: boolean;
  switch_on_success?: boolean;
  keep_on_channel_disabled?: boolean;
  max_entries?: number;
  default_ttl_seconds?: number;
  rules?: NewApiRule[];
}

/** Converts a Go RE2 pattern to JS; throws naming the rule and the pattern when it cannot. */
function convertGoRegex(rule: string, pattern: string): string {
  let p = pattern;
  let prefix = '';
  if (p.startsWith('(?i)')) {
    prefix = '(?i)';
    p = p.slice(4);
  }
  p = p.replace(/\(\?P</g, '(?<').replace(/\\A/g, '^').replace(/\\z/g, '$');
  // Go-only: flag groups, \Q...\E quoting, Unicode classes \pL / \p{Greek} (a JS regex without
  // the u flag reads them as a literal "p"), POSIX classes [[:alpha:]] anywhere inside a class.
  if (/\(\?[a-zA-Z]+[):]/.test(p) || /(?:^|[^\\])(?:\\\\)*\\[QEpP]/.test(p) || /\[:\^?[a-z]+:\]/.test(p)) {
    throw configError(`affinity rule "${rule}": Go regex ${JSON.stringify(pattern)} has syntax with no JavaScript equivalent`);
  }
  const out = prefix + p;
  compileRegex(rule, out);
  return out;
}

/**
 * Converts new-api's `channel_affinity_setting` JSON (a string or the parsed object) into
 * `AffinityOptions`, so a migrating team pastes its configuration unchanged.
 */
export function affinityFromNewApi(json: string | NewApiAffinitySetting): AffinityOptions {
  let s: NewApiAffinitySetting;
  try {
    s = typeof json === 'string' ? (JSON.parse(json) as NewApiAffinitySetting) : json;
  } catch (e) {
    throw configError(`channel_affinity_setting is not valid JSON (${(e as Error).message})`);
  }
  if (!s || typeof s !== 'object' || Array.isArray(s)) throw configError('channel_affinity_setting must be a JSON object');
  const out: AffinityOptions = {};
  if (s.enabled !== undefined) out.enabled = !!s.enabled;
  if (s.switch_on_success !== undefined) out.switchOnSuccess = !!s.switch_on_success;
  if (s.keep_on_channel_disabled !== undefined) out.keepOnChannelDisabled = !!s.keep_on_channel_disabled;
  if (typeof s.default_ttl_seconds === 'number' && s.default_ttl_seconds > 0) out.defaultTtlSeconds = s.default_ttl_seconds;
  if (s.rules !== undefined) {
    if (!Array.isArray(s.rules)) throw configError('channel_affinity_setting.rules must be an array');
    out.rules = s.rules.map((r, i): AffinityRule => {
      const name = r?.name || `rule ${i}`;
      const conv = (list: unknown, field: string) => {
        if (list === undefined || list === null) return undefined;
        if (!Array.isArray(list)) throw configError(`affinity rule "${name}": ${field} must be an array`);
        return list.filter((x): x is string => typeof x === 'string' && x.trim() !== '').map((x) => convertGoRegex(name, x));
      };
      const keySources = (r.key_sources ?? []).map((k): KeySource => {
        switch (k?.type) {
          case 'request_header':
            return { type: 'header', key: k.key ?? '' };
          case 'gjson':
            return k.nested_path ? { type: 'body', path: k.path ?? '', nestedPath: k.nested_path } : { type: 'body', path: k.path ?? '' };
          case 'context_int':
          case 'context_string':
            return { type: 'context', key: k.key ?? '' };
          default:
            throw new DistributorError('ERR_DIST_INVALID_OPTIONS', `affinity rule "${name}": unknown key source type ${JSON.stringify(k?.type)}`);
        }
      });
      const rule: AffinityRule = {
        name,
        modelRegex: conv(r.model_regex, 'model_regex') ?? [],
        keySources,
        skipRetryOnFailure: !!r.skip_retry_on_failure,
        includeUsingGroup: !!r.include_using_group,
        includeModelName: !!r.include_model_name,
        includeRuleName: !!r.include_rule_name,
      };
      const paths = conv(r.path_regex, 'path_regex');
      if (paths && paths.length) rule.pathRegex = paths;
      if (Array.isArray(r.user_agent_include) && r.user_agent_include.length) rule.userAgentInclude = r.user_agent_include.filter((x) => typeof x === 'string');
      if (r.value_regex) rule.valueRegex = convertGoRegex(name, r.value_regex);
      if (typeof r.ttl_seconds === 'number' && r.ttl_seconds > 0) rule.ttlSeconds = r.ttl_seconds;
      return rule;
    });
  }
  return out;
}
