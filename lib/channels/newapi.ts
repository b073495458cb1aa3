// Converts new-api / one-api channel rows (snake_case, as in its `channels` table or admin API)
// into ChannelInput, so a migrating team loads its rows unchanged.
import { DistributorError } from '../errors';
import type { ChannelInput, ChannelStatus, ChannelType } from '../types';

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
export function channelFromNewApi(row: NewApiChannelRow): ChannelInput {
  if (!row || typeof row !== 'object') throw new DistributorError('ERR_DIST_INVALID_CHANNEL', 'Invalid channel row: not an object');
  const {
    id, name, type: newApiType, key, status, weight, priority, group, models, base_url: baseUrl, auto_ban: autoBan, channel_info: rawInfo, ...rest
  } = row;
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
  const type = newApiType === undefined ? undefined : NEW_API_TYPES[newApiType];
  if (type) out.type = type;
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

/** Converts every row (see `channelFromNewApi`). */
export function channelsFromNewApi(rows: NewApiChannelRow[]): ChannelInput[] {
  if (!Array.isArray(rows)) throw new DistributorError('ERR_DIST_INVALID_CHANNEL', 'channel rows must be an array');
  return rows.map(channelFromNewApi);
}
