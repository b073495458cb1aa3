// Prometheus metrics built on the public hooks. prom-client is an optional peer dependency: it
// is required only when distributorMetrics() is called, and its types never reach our .d.ts.
import type { Request } from 'express';
import type * as PromClient from 'prom-client';
import { DistributorError } from './errors';
import { mergeHooks } from './hooks';
import type { DistributorHooks } from './types';

/** The part of a prom-client `Registry` used here; any prom-client >= 15 registry fits. */
export interface MetricsRegistry {
  metrics(): Promise<string>;
  readonly contentType: string;
  getSingleMetric(name: string): unknown;
}

export interface DistributorMetricsOptions<R extends MetricsRegistry = MetricsRegistry> {
  /** Where the metrics are registered. Default: prom-client's global `register`. */
  registry?: R;
  /** Prefix of every metric name. Default `'distributor_'`. */
  prefix?: string;
  /** Buckets (seconds) of the decision latency histogram. Default 0.5 ms .. 2.5 s. */
  buckets?: number[];
}

export interface DistributorMetrics<R extends MetricsRegistry = MetricsRegistry> {
  /** Pass as `on:` (or combine with your own hooks through `merge`). */
  readonly hooks: DistributorHooks;
  /** The registry the metrics live in: serve `await registry.metrics()` with `registry.contentType`. */
  readonly registry: R;
  /** The metric hooks plus your own (each event goes to both). */
  merge(on?: DistributorHooks): DistributorHooks;
}

const DEFAULT_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

function loadPromClient(): typeof PromClient {
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    return require('prom-client') as typeof PromClient;
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err?.code === 'MODULE_NOT_FOUND' && String(err.message).includes('prom-client')) {
      throw new DistributorError('ERR_DIST_MISSING_PEER', 'distributorMetrics() needs prom-client, an optional peer dependency: npm install prom-client');
    }
    throw e;
  }
}

/** Status label: the HTTP status, or `error` for a connection failure or timeout. */
function statusLabel(status: number | undefined): string {
  if (status === undefined) return 'error';
  return Number.isInteger(status) && status >= 100 && status <= 599 ? String(status) : 'other';
}

/**
 * Prometheus metrics for a distributor, fed by its hooks. Labels are low-cardinality only:
 * channel id, reason, rule name, status, store operation, token kind; never keys, users or
 * affinity values. `tokens_total` is fed by usage reports (`relay()` makes them): the cached
 * share of pinned requests is `tokens_total{kind="cached",affinity="hit"} / {kind="input",affinity="hit"}`.
 *
 * @example
 * const metrics = distributorMetrics({ registry });
 * app.use('/v1', distributor({ channels, on: metrics.hooks }));
 * app.get('/metrics', async (_req, res) => res.type(metrics.registry.contentType).send(await metrics.registry.metrics()));
 */
export function distributorMetrics<R extends MetricsRegistry = MetricsRegistry>(options: DistributorMetricsOptions<R> = {}): DistributorMetrics<R> {
  const client = loadPromClient();
  const registry = (options.registry ?? client.register) as unknown as PromClient.Registry;
  const prefix = options.prefix ?? 'distributor_';
  if (!/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(`${prefix}x`)) {
    throw new DistributorError('ERR_DIST_INVALID_OPTIONS', `metrics prefix "${prefix}" is not a valid Prometheus metric name prefix`);
  }
  // Reuse metrics already registered under the same name (two distributors on one registry).
  const counter = <L extends string>(name: string, help: string, labelNames: L[]): PromClient.Counter<L> =>
    (registry.getSingleMetric(prefix + name) as PromClient.Counter<L> | undefined)
    ?? new client.Counter({ name: prefix + name, help, labelNames, registers: [registry] });

  const selections = counter('selections_total', 'Channels chosen, by channel and reason (affinity, select, specific, fallback, retry).', ['channel', 'reason']);
  const affinity = counter('affinity_total', 'Affinity lookups by rule and result (hit, miss, stale_cleared, stale_kept, moved).', ['rule', 'result']);
  const stale = counter('affinity_stale_total', 'Stale pins by rule and reason (missing, disabled, ineligible, cooling, ejected, setup_failed, saturated).', ['rule', 'reason']);
  const fallbacks = counter('setup_fallbacks_total', 'Channel setups that failed and fell back to another channel.', ['channel']);
  const retries = counter('retries_total', 'Upstream retries, by the status that caused them (error: no response).', ['status']);
  const exhausted = counter('exhausted_total', 'Requests whose retries stopped, by reason.', ['reason']);
  const storeErrors = counter('store_errors_total', 'Store calls that failed (the distributor degraded instead).', ['operation']);
  const tokens = counter('tokens_total', 'Tokens of the answers that served, from usage reports, by rule (empty: no rule), channel, kind (input, cached, output, cache_write) and affinity (hit, miss, none).', ['rule', 'channel', 'kind', 'affinity']);
  const health = counter('health_events_total', 'Channel health events (cooldown, auto_disabled, key_disabled, re_enabled, ejected, key_cooldown).', ['channel', 'event']);
  const saturated = counter('saturated_total', 'Requests that found every candidate channel at its limits: queued (waited for a slot) or rejected (429 channels_saturated).', ['outcome']);
  const decision = (registry.getSingleMetric(`${prefix}decision_duration_seconds`) as PromClient.Histogram<'reason'> | undefined)
    ?? new client.Histogram({
      name: `${prefix}decision_duration_seconds`,
      help: 'Time from the distributor receiving a request to its first channel being chosen and set up.',
      labelNames: ['reason'],
      buckets: options.buckets ?? DEFAULT_BUCKETS,
      registers: [registry],
    });

  // "moved": a request that carried a pin succeeded on another channel (the pin follows it).
  const watched = new WeakSet<Request>();
  const watchPin = (req: Request, rule: string, pinned: number) => {
    const res = req.res;
    if (!res || watched.has(req)) return;
    watched.add(req);
    res.once('finish', () => {
      const served = res.locals.channel?.id;
      if (res.statusCode < 400 && served !== undefined && served !== pinned) affinity.inc({ rule, result: 'moved' });
    });
  };

  const hooks: DistributorHooks = {
    select(e) {
      selections.inc({ channel: String(e.channel.id), reason: e.reason });
      if (e.reason !== 'retry' && e.elapsedMs !== undefined) decision.observe({ reason: e.reason }, e.elapsedMs / 1000);
    },
    affinityHit(e) {
      affinity.inc({ rule: e.rule, result: 'hit' });
      watchPin(e.req, e.rule, e.channelId);
    },
    affinityMiss(e) {
      affinity.inc({ rule: e.rule, result: 'miss' });
    },
    affinityStale(e) {
      affinity.inc({ rule: e.rule, result: e.cleared ? 'stale_cleared' : 'stale_kept' });
      stale.inc({ rule: e.rule, reason: e.reason });
      watchPin(e.req, e.rule, e.channelId);
    },
    fallback(e) {
      fallbacks.inc({ channel: String(e.channelId) });
    },
    retry(e) {
      retries.inc({ status: statusLabel(e.status) });
    },
    exhausted(e) {
      exhausted.inc({ reason: e.reason });
    },
    storeError(e) {
      storeErrors.inc({ operation: e.operation });
    },
    health(e) {
      health.inc({ channel: String(e.channelId), event: e.event });
    },
    saturated(e) {
      saturated.inc({ outcome: e.outcome });
    },
    usage(e) {
      const labels = { rule: e.rule ?? '', channel: String(e.channelId), affinity: e.affinity };
      const u = e.usage;
      // every count the report states (0 too: a cached ratio of 0 is an answer, not a gap)
      if (u.inputTokens !== undefined) tokens.inc({ ...labels, kind: 'input' }, u.inputTokens);
      if (u.cachedTokens !== undefined) tokens.inc({ ...labels, kind: 'cached' }, u.cachedTokens);
      if (u.outputTokens !== undefined) tokens.inc({ ...labels, kind: 'output' }, u.outputTokens);
      if (u.cacheWriteTokens !== undefined) tokens.inc({ ...labels, kind: 'cache_write' }, u.cacheWriteTokens);
    },
  };
  return {
    hooks,
    registry: registry as unknown as R,
    merge: (on?: DistributorHooks) => mergeHooks(hooks, on),
  };
}
