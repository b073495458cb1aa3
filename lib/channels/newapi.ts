// Converts new-api / one-api channel rows (snake_case, as in its `channels` table or admin API)
// into ChannelInput, so a migrating team loads its rows unchanged.
import { DistributorError } from '../errors';
import { createDefaultLogger } from '../logging/logger';
import type { ChannelInput, ChannelStatus, ChannelType, Logger } from '../types';
import { warnOnce } from '../validations';
import { parseModelMapping } from './registry';

/** A channel row as new-api stores it. Unknown fields are passed through. */
export interface NewApiChannelRow {
  id: number;
  name?: string;
  type?: number;
  key?: string;
  status?: number;
  weight?: number | null;
  priority?: number | null;
  group?: string;
  models?: string;
  base_url?: string | null;
  auto_ban?: number | null;
  /** The reference's `model_mapping`: JSON `{"requested": "upstream"}` (a string), or an object. */
  model_mapping?: string | Record<string, string> | null;
  /** Type-specific setting; for Azure (type 3) the `api-version`. */
  other?: string | null;
  channel_info?: {
    is_multi_key?: boolean;
    multi_key_mode?: 'random' | 'polling' | string;
    /** key index -> status (1 enabled; anything else off) */
    multi_key_status_list?: Record<string, number> | null;
  } | string | null;
  [extra: string]: unknown;
}

/** new-api channel type numbers with a native relay here (API.md 11.5); others relay as OpenAI. */
const NEW_API_TYPES: Partial<Record<number, ChannelType>> = { 1: 'openai', 3: 'azure', 14: 'anthropic', 24: 'gemini' };

/** Options of `channelsFromNewApi()` / `channelFromNewApi()`. */
export interface NewApiImportOptions {
  /**
   * Receives the import's warnings (`WRN_DIST_CHANNEL_TYPE`, `WRN_DIST_CHANNEL_FIELD`), each once
   * per process and subject. Default: the package's default logger (winston, JSON lines on stderr).
   */
  logger?: Logger;
}

let defaultLogger: Logger | undefined;

const API_VERSION = /^[A-Za-z0-9._-]{1,40}$/;

function splitKeys(key: string): string[] {
  const t = key.trim();
  if (t.startsWith('[')) {
    try {
      const arr = JSON.parse(t) as unknown;
      if (Array.isArray(arr)) return arr.map((k) => (typeof k === 'string' ? k : JSON.stringify(k))).filter((k) => k.trim() !== '');
    } catch {
      /* not JSON: fall through to newline splitting */
    }
  }
  return t.split('\n').map((k) => k.trim()).filter((k) => k !== '');
}

/**
 * Converts one new-api channel row. Multi-key channels (`channel_info.is_multi_key`) get a key
 * array, `multiKeyMode` and `disabledKeys` from `multi_key_status_list`; `auto_ban` 1 -> true.
 * Note: new-api splits `group`/`models` without trimming; here entries are trimmed.
 */
export function channelFromNewApi(row: NewApiChannelRow, options: NewApiImportOptions = {}): ChannelInput {
  if (!row || typeof row !== 'object') throw new DistributorError('ERR_DIST_INVALID_CHANNEL', 'Invalid channel row: not an object');
  const {
    id, name, type: newApiType, key, status, weight, priority, group, models, base_url: baseUrl, auto_ban: autoBan, channel_info: rawInfo, ...rest
  } = row;
  const rawMapping = row.model_mapping; // also kept as the extra `model_mapping`, as in 0.1
  const warn = (name: 'channelType' | 'channelField', subject: string, message: string) =>
    warnOnce(options.logger ?? (defaultLogger ??= createDefaultLogger()), name, subject, message);
  let info = rawInfo;
  if (typeof info === 'string') {
    try {
      info = JSON.parse(info) as NewApiChannelRow['channel_info'];
    } catch {
      info = null;
    }
  }
  const out: ChannelInput = { ...rest, id, models: models ?? '' };
  if (name !== undefined) out.name = name;
  if (status !== undefined) out.status = status as ChannelStatus;
  if (weight !== undefined && weight !== null) out.weight = weight;
  if (priority !== undefined && priority !== null) out.priority = priority;
  if (group !== undefined) out.group = group;
  if (baseUrl) out.baseUrl = baseUrl;
  const type = newApiType === undefined || newApiType === null ? undefined : NEW_API_TYPES[newApiType];
  if (type) out.type = type;
  else if (newApiType !== undefined && newApiType !== null) {
    out.type = 'openai';
    // one line per type number and process, however many rows carry it (no key, no name in it)
    const n = typeof newApiType === 'number' ? String(newApiType) : JSON.stringify(String(newApiType)).slice(0, 40);
    warn('channelType', n, `new-api channel type ${n} has no native relay here; its channels import as type "openai" ` +
      '(authorization: Bearer <key>, OpenAI paths). Set `type` on them if the upstream speaks azure, anthropic or gemini');
  }
  if (rawMapping !== undefined && rawMapping !== null && rawMapping !== '') {
    const mapping = parseModelMapping(rawMapping);
    if (typeof mapping === 'string') {
      warn('channelField', `${String(id)}|model_mapping`, `new-api channel ${String(id)}: model_mapping dropped (${mapping}); its requests go upstream with the requested model`);
    } else if (mapping) out.modelMapping = mapping;
  }
  if (type === 'azure' && typeof rest.other === 'string' && rest.other.trim() !== '') {
    const v = rest.other.trim();
    if (API_VERSION.test(v)) out.apiVersion = v;
    else warn('channelField', `${String(id)}|other`, `new-api channel ${String(id)}: other (the Azure api version) is not a version string; dropped, 2024-10-21 is used`);
  }
  out.autoBan = autoBan === undefined || autoBan === null ? true : autoBan === 1;
  if (typeof key === 'string' && key !== '') {
    const multi = info && typeof info === 'object' && info.is_multi_key;
    if (multi) {
      out.key = splitKeys(key);
      const mode = info && typeof info === 'object' ? info.multi_key_mode : undefined;
      out.multiKeyMode = mode === 'polling' ? 'polling' : 'random';
      const list = info && typeof info === 'object' ? info.multi_key_status_list : undefined;
      if (list) {
        out.disabledKeys = Object.entries(list).filter(([, s]) => s !== 1).map(([i]) => Number(i)).filter((i) => Number.isInteger(i) && i >= 0);
      }
    } else {
      out.key = key;
    }
  }
  return out;
}

/**
 * Converts every row (see `channelFromNewApi`). Type numbers 1 / 3 / 14 / 24 become `openai` /
 * `azure` / `anthropic` / `gemini`; another number imports as `openai` and warns once per process
 * with `WRN_DIST_CHANNEL_TYPE`. `model_mapping` becomes `modelMapping`, an Azure row's `other` its
 * `apiVersion`; one that cannot be imported is dropped with `WRN_DIST_CHANNEL_FIELD` (the import
 * never fails for it).
 */
export function channelsFromNewApi(rows: NewApiChannelRow[], options: NewApiImportOptions = {}): ChannelInput[] {
  if (!Array.isArray(rows)) throw new DistributorError('ERR_DIST_INVALID_CHANNEL', 'channel rows must be an array');
  return rows.map((row) => channelFromNewApi(row, options));
}
