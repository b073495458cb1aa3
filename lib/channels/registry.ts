// ChannelRegistry: validated channels and the group -> model -> priority-tier index,
// rebuilt once per change (never per request).
import { DistributorError } from '../errors';
import { ChannelStatus, type Channel, type ChannelInput, type ChannelLimits, type ChannelType } from '../types';

/** A validated channel as the registry keeps it. Treat as read-only. */
export interface RegisteredChannel {
  readonly id: number;
  readonly name: string;
  status: ChannelStatus;
  readonly groups: readonly string[];
  readonly models: readonly string[];
  readonly priority: number;
  readonly weight: number;
  readonly keys: readonly string[];
  readonly disabledKeys: ReadonlySet<number>;
  readonly multiKeyMode: 'random' | 'polling';
  readonly autoBan: boolean;
  readonly type: ChannelType;
  /** Azure `api-version` (only when given). */
  readonly apiVersion?: string;
  /** Requested model -> upstream model; undefined when the channel maps nothing. */
  readonly modelMapping?: Readonly<Record<string, string>>;
  /** Validated limits; undefined when the channel has none. */
  readonly limits?: Readonly<ChannelLimits>;
  /** @internal `models` as a set, for channels with many models (affinity checks a pin with it). */
  readonly modelSet?: ReadonlySet<string>;
  /** The frozen `res.locals.channel` view without a chosen key. */
  view: Channel;
  /**
   * @internal views with a chosen key, derived from `base` (rebuilt when `view` is replaced), and
   * the same without the key for observers (hook events)
   */
  keyViews?: { base: Channel; views: Channel[]; observed?: Channel[] };
  readonly input: Readonly<ChannelInput>;
}

/** One priority tier of one (group, model): channels with cumulative weights for an O(log n) pick. */
export interface Tier {
  readonly priority: number;
  readonly channels: readonly RegisteredChannel[];
  /**
   * Packed per-channel data, 3 numbers each, so a pick touches one cache line instead of four:
   * [3i] cumulative weight of channels[0..i], [3i+1] guide = first index whose cumulative weight
   * exceeds i * totalWeight / n (the cutpoint method: a pick starts there and walks a step or
   * two, whatever the tier size), [3i+2] channel id (exclusion checks skip the objects).
   */
  readonly packed: Float64Array;
  readonly totalWeight: number;
}

export type RegistryChange =
  | { type: 'status'; id: number; status: ChannelStatus; source: 'local' | 'remote' }
  | { type: 'keys'; id: number; disabledKeys: number[]; source: 'local' | 'remote' }
  | { type: 'reload' }
  /** One channel was added or replaced: its input status and keys are the new truth. */
  | { type: 'upsert'; id: number };

const KNOWN_FIELDS = new Set([
  'id', 'name', 'status', 'group', 'models', 'priority', 'weight', 'baseUrl', 'key',
  'disabledKeys', 'multiKeyMode', 'autoBan', 'type', 'apiVersion', 'modelMapping', 'limits',
]);

const CHANNEL_TYPES: readonly ChannelType[] = ['openai', 'azure', 'anthropic', 'gemini'];

/**
 * `modelMapping` as a frozen null-prototype object (so `__proto__` or `constructor` map nothing by
 * accident), from an object or the reference's JSON string; undefined when it maps nothing.
 * Throws a message for anything else.
 */
export function parseModelMapping(raw: unknown): Readonly<Record<string, string>> | undefined | string {
  if (raw === undefined || raw === null || raw === '') return undefined;
  let obj: unknown = raw;
  if (typeof raw === 'string') {
    try {
      obj = JSON.parse(raw);
    } catch {
      return 'modelMapping is not valid JSON';
    }
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj)) return 'modelMapping must be an object of model names';
  const out: Record<string, string> = Object.create(null) as Record<string, string>;
  let n = 0;
  for (const [from, to] of Object.entries(obj as Record<string, unknown>)) {
    if (typeof to !== 'string') return `modelMapping.${from} must be a string`;
    if (from === '' || to === '') continue;
    out[from] = to;
    n++;
  }
  return n === 0 ? undefined : Object.freeze(out);
}

function checkLimits(input: ChannelInput): Readonly<ChannelLimits> | undefined {
  const raw = input.limits;
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw !== 'object' || Array.isArray(raw)) throw invalid(input, 'limits must be an object { rpm?, tpm?, maxConcurrency? }');
  const out: ChannelLimits = {};
  for (const k of Object.keys(raw)) {
    if (k !== 'rpm' && k !== 'tpm' && k !== 'maxConcurrency') throw invalid(input, `limits.${k} is not a known limit (rpm, tpm, maxConcurrency)`);
    const v = (raw as Record<string, unknown>)[k];
    if (v === undefined) continue;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 1e9) throw invalid(input, `limits.${k} must be an integer from 1 to 1e9`);
    out[k] = v;
  }
  return Object.keys(out).length ? Object.freeze(out) : undefined;
}

function invalid(input: unknown, why: string): DistributorError {
  const id = input && typeof input === 'object' && 'id' in input ? String((input as { id: unknown }).id) : '?';
  const name = input && typeof input === 'object' && typeof (input as { name?: unknown }).name === 'string'
    ? ` (${(input as { name: string }).name})` : '';
  return new DistributorError('ERR_DIST_INVALID_CHANNEL', `Invalid channel ${id}${name}: ${why}`);
}

function splitList(value: unknown, field: string, input: unknown, fallback?: string[]): string[] {
  if (value === undefined || value === null || value === '') {
    if (fallback) return fallback;
    throw invalid(input, `${field} is empty`);
  }
  const parts = typeof value === 'string' ? value.split(',') : Array.isArray(value) ? value : null;
  if (!parts || parts.some((p) => typeof p !== 'string')) throw invalid(input, `${field} must be a string or an array of strings`);
  const out = [...new Set((parts as string[]).map((p) => p.trim()).filter((p) => p.length > 0))];
  if (out.length === 0) {
    if (fallback) return fallback;
    throw invalid(input, `${field} is empty`);
  }
  return out;
}

function buildView(ch: Omit<RegisteredChannel, 'view'>): Channel {
  const extras: Record<string, unknown> = {};
  for (const k of Object.keys(ch.input)) {
    if (!KNOWN_FIELDS.has(k) && k !== '__proto__' && k !== 'constructor') extras[k] = ch.input[k];
  }
  const view: Record<string, unknown> = {
    ...extras,
    id: ch.id,
    name: ch.name,
    status: ch.status,
    groups: Object.freeze([...ch.groups]),
    models: Object.freeze([...ch.models]),
    priority: ch.priority,
    weight: ch.weight,
    multiKeyMode: ch.multiKeyMode,
    autoBan: ch.autoBan,
    type: ch.type,
  };
  if (typeof ch.input.baseUrl === 'string') view.baseUrl = ch.input.baseUrl;
  if (ch.apiVersion !== undefined) view.apiVersion = ch.apiVersion;
  if (ch.modelMapping !== undefined) view.modelMapping = ch.modelMapping;
  if (ch.limits !== undefined) view.limits = ch.limits;
  return Object.freeze(view) as Channel;
}

/** Validates one input and returns the registry's form of it. Throws `ERR_DIST_INVALID_CHANNEL`. */
export function normalizeChannel(input: ChannelInput): RegisteredChannel {
  if (!input || typeof input !== 'object') throw invalid(input, 'not an object');
  const { id } = input;
  if (typeof id !== 'number' || !Number.isInteger(id) || id <= 0) throw invalid(input, 'id must be a positive integer');
  const status = input.status ?? ChannelStatus.Enabled;
  if (![1, 2, 3].includes(status)) throw invalid(input, 'status must be 1, 2 or 3');
  const priority = input.priority ?? 0;
  if (typeof priority !== 'number' || !Number.isFinite(priority)) throw invalid(input, 'priority must be a finite number');
  const weight = input.weight ?? 0;
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight < 0) throw invalid(input, 'weight must be a number >= 0');
  const models = splitList(input.models, 'models', input);
  const groups = splitList(input.group, 'group', input, ['default']);
  let keys: string[] = [];
  if (input.key !== undefined && input.key !== null) {
    if (typeof input.key === 'string') keys = [input.key];
    else if (Array.isArray(input.key) && input.key.every((k) => typeof k === 'string')) keys = [...input.key];
    else throw invalid(input, 'key must be a string or an array of strings');
  }
  const disabled = input.disabledKeys ?? [];
  if (!Array.isArray(disabled) || disabled.some((i) => !Number.isInteger(i) || i < 0)) throw invalid(input, 'disabledKeys must be an array of key indexes');
  const multiKeyMode = input.multiKeyMode ?? 'random';
  if (multiKeyMode !== 'random' && multiKeyMode !== 'polling') throw invalid(input, "multiKeyMode must be 'random' or 'polling'");
  if (input.name !== undefined && typeof input.name !== 'string') throw invalid(input, 'name must be a string');
  if (input.baseUrl !== undefined && typeof input.baseUrl !== 'string') throw invalid(input, 'baseUrl must be a string');
  const type = input.type ?? 'openai';
  if (!CHANNEL_TYPES.includes(type)) throw invalid(input, `type must be one of ${CHANNEL_TYPES.join(', ')}`);
  if (input.apiVersion !== undefined && (typeof input.apiVersion !== 'string' || !/^[A-Za-z0-9._-]{1,40}$/.test(input.apiVersion))) {
    throw invalid(input, 'apiVersion must be a short version string such as 2024-10-21');
  }
  const modelMapping = parseModelMapping(input.modelMapping);
  if (typeof modelMapping === 'string') throw invalid(input, modelMapping);
  const limits = checkLimits(input);
  const base = {
    id,
    name: input.name ?? `channel-${id}`,
    status,
    groups,
    models,
    priority,
    weight,
    keys,
    disabledKeys: new Set(disabled),
    multiKeyMode,
    autoBan: input.autoBan ?? true,
    type,
    apiVersion: input.apiVersion,
    modelMapping,
    limits,
    input: Object.freeze({ ...input }),
    modelSet: models.length > 8 ? new Set(models) : undefined,
    keyViews: undefined,
  };
  return Object.assign(base, { view: buildView(base) });
}

/**
 * Holds the channels and the routing index. Every change takes effect for the next request.
 *
 * @example
 * const registry = new ChannelRegistry([{ id: 1, models: 'gpt-4o', key: 'sk-...' }]);
 * registry.setStatus(1, ChannelStatus.ManuallyDisabled);
 */
export class ChannelRegistry {
  private byId = new Map<number, RegisteredChannel>();
  private index = new Map<string, Map<string, Tier[]>>();
  private listeners = new Set<(change: RegistryChange) => void>();

  constructor(channels: ChannelInput[] = []) {
    if (!Array.isArray(channels)) throw new DistributorError('ERR_DIST_INVALID_CHANNEL', 'channels must be an array');
    this.byId = ChannelRegistry.validateAll(channels);
    this.rebuild();
  }

  private static validateAll(channels: ChannelInput[]): Map<number, RegisteredChannel> {
    const map = new Map<number, RegisteredChannel>();
    for (const input of channels) {
      const ch = normalizeChannel(input);
      if (map.has(ch.id)) throw invalid(input, 'duplicate id');
      map.set(ch.id, ch);
    }
    return map;
  }

  /** The registered channel (any status), or undefined. */
  get(id: number): RegisteredChannel | undefined {
    return this.byId.get(id);
  }

  /** Every channel, in insertion order. */
  list(): RegisteredChannel[] {
    return [...this.byId.values()];
  }

  get size(): number {
    return this.byId.size;
  }

  /**
   * Adds or replaces one channel. Its status and disabled keys replace any health override
   * (an explicit edit), whereas `replaceAll()` keeps overrides such as an auto-disable.
   */
  upsert(channel: ChannelInput): RegisteredChannel {
    const ch = normalizeChannel(channel);
    this.byId.set(ch.id, ch);
    this.rebuild();
    this.emit({ type: 'upsert', id: ch.id });
    return ch;
  }

  /** Removes a channel; true when it existed. */
  remove(id: number): boolean {
    const existed = this.byId.delete(id);
    if (existed) {
      this.rebuild();
      this.emit({ type: 'reload' });
    }
    return existed;
  }

  /** Replaces every channel at once (all validated before anything changes). */
  replaceAll(channels: ChannelInput[]): void {
    this.byId = ChannelRegistry.validateAll(channels);
    this.rebuild();
    this.emit({ type: 'reload' });
  }

  /** Sets a channel's status; false when the channel is unknown. Shared through a distributor's store. */
  setStatus(id: number, status: ChannelStatus): boolean {
    return this.applyStatus(id, status, 'local');
  }

  /** @internal status change with its origin (a remote change is not published again). */
  applyStatus(id: number, status: ChannelStatus, source: 'local' | 'remote'): boolean {
    if (![1, 2, 3].includes(status)) throw new DistributorError('ERR_DIST_INVALID_CHANNEL', `Invalid status ${String(status)} for channel ${id}`);
    const ch = this.byId.get(id);
    if (!ch) return false;
    if (ch.status !== status) {
      ch.status = status;
      ch.view = Object.freeze({ ...ch.view, status }) as Channel;
      this.rebuild();
    }
    this.emit({ type: 'status', id, status, source });
    return true;
  }

  /** @internal replaces a multi-key channel's disabled key set. */
  applyDisabledKeys(id: number, disabledKeys: number[], source: 'local' | 'remote'): boolean {
    const ch = this.byId.get(id);
    if (!ch) return false;
    (ch as { disabledKeys: ReadonlySet<number> }).disabledKeys = new Set(disabledKeys);
    this.emit({ type: 'keys', id, disabledKeys, source });
    return true;
  }

  /** Tiers (priority descending) serving (group, model); model names fall back to new-api's normalisation. */
  tiers(group: string, model: string): readonly Tier[] | undefined {
    const byModel = this.index.get(group);
    if (!byModel) return undefined;
    return byModel.get(model) ?? byModel.get(normalizeModelName(model));
  }

  /** Does an enabled channel `id` serve (group, model)? */
  serves(id: number, group: string, model: string): boolean {
    const ch = this.byId.get(id);
    if (!ch || ch.status !== ChannelStatus.Enabled || !ch.groups.includes(group)) return false;
    return hasModel(ch, model) || hasModel(ch, normalizeModelName(model));
  }

  /** @internal subscribe to changes; returns the unsubscribe function. */
  onChange(listener: (change: RegistryChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(change: RegistryChange): void {
    for (const l of this.listeners) l(change);
  }

  private rebuild(): void {
    const lists = new Map<string, Map<string, RegisteredChannel[]>>();
    for (const ch of this.byId.values()) {
      if (ch.status !== ChannelStatus.Enabled) continue;
      for (const g of ch.groups) {
        let byModel = lists.get(g);
        if (!byModel) lists.set(g, (byModel = new Map()));
        for (const m of ch.models) {
          let arr = byModel.get(m);
          if (!arr) byModel.set(m, (arr = []));
          arr.push(ch);
        }
      }
    }
    const index = new Map<string, Map<string, Tier[]>>();
    for (const [g, byModel] of lists) {
      const out = new Map<string, Tier[]>();
      for (const [m, chans] of byModel) out.set(m, buildTiers(chans));
      index.set(g, out);
    }
    this.index = index;
  }
}

function buildTiers(chans: RegisteredChannel[]): Tier[] {
  const byPriority = new Map<number, RegisteredChannel[]>();
  for (const ch of chans) {
    const arr = byPriority.get(ch.priority);
    if (arr) arr.push(ch);
    else byPriority.set(ch.priority, [ch]);
  }
  return [...byPriority.entries()]
    .sort((a, b) => b[0] - a[0])
    .map(([priority, channels]) => {
      const n = channels.length;
      const packed = new Float64Array(3 * n);
      let sum = 0;
      channels.forEach((c, i) => {
        sum += c.weight;
        packed[3 * i] = sum;
        packed[3 * i + 2] = c.id;
      });
      let i = 0;
      for (let j = 0; j < n; j++) {
        const x = (j * sum) / n;
        while (i < n - 1 && packed[3 * i] <= x) i++;
        packed[3 * j + 1] = sum > 0 ? i : j;
      }
      return { priority, channels, packed, totalWeight: sum };
    });
}

function hasModel(ch: RegisteredChannel, model: string): boolean {
  return ch.modelSet ? ch.modelSet.has(model) : ch.models.includes(model);
}

/** new-api's `FormatMatchingModelName`: gizmo models match a `-*` wildcard entry. */
export function normalizeModelName(model: string): string {
  if (model.startsWith('gpt-4-gizmo')) return 'gpt-4-gizmo-*';
  if (model.startsWith('gpt-4o-gizmo')) return 'gpt-4o-gizmo-*';
  return model;
}
